// The SIMT emulator's runtime: blocks of cooperative fibers, strict barriers
// and warp collectives, atomics, and the race mode's shadow memory.
//
// Each block runs on one OS thread: its threads are fibers switched by hand
// (x86-64: a six-register switch; elsewhere ucontext). A fiber runs until it
// waits (barrier, warp collective) or exits; the scheduler then switches to
// the next runnable thread in the block's order (ascending, descending, or a
// seeded random permutation redrawn at each barrier). When no thread can run
// and some have not exited, the block reports the deadlock instead of hanging.
//
// Race mode: the kernel objects are compiled with -fsanitize=thread, and this
// file (compiled without it) supplies the __tsan_* callbacks instead of
// libtsan. A word of shared memory (the module's thread-local block, where
// __shared__ = static thread_local lives) is tracked per barrier interval:
// writer, readers, atomics, and whether it was written in this block at all.
// Global words (anything else but the fiber stacks) keep the block that wrote
// them in this launch.
//
// This file is not compiled with -fsanitize=thread and has no __shared__
// variables, so nothing here is instrumented.
#include "emu.h"
#include "runtime_api.h"

#include <dlfcn.h>
#include <link.h>
#include <omp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

#define EMU_HIDDEN __attribute__((visibility("hidden")))

namespace emu {
namespace {

// ---------------------------------------------------------------- fibers ----
enum State : uint8_t { kRunnable, kAtBarrier, kAtCollective, kExited };

struct Fiber {
  void* sp = nullptr;  // saved stack pointer (x86-64)
#if !defined(__x86_64__)
  ucontext_t uc;
#endif
  int tid = 0;  // linear id in the block
  uint3 idx = {0, 0, 0};
  State state = kRunnable;
  const char* file = nullptr;  // where it waits
  int line = 0;
  uint64_t value = 0;  // collective input
  int arg = 0;
  uint64_t result = 0;  // collective / barrier result
  int64_t full_collectives = 0;  // full-warp collectives it has taken part in
};

struct WarpWait {
  bool active = false;
  int kind = 0;
  const char* file = nullptr;
  int line = 0;
  unsigned mask = 0, arrived = 0;
  int width = 32;
  int64_t full_count = 0;
};

}  // namespace
}  // namespace emu

extern "C" {
EMU_HIDDEN void emu_switch_context(void** save_sp, void* new_sp);
EMU_HIDDEN void emu_fiber_trampoline();
EMU_HIDDEN void emu_fiber_main(emu::Fiber* f);
}

#if defined(__x86_64__)
// Saves the callee-saved registers on the current stack, stores the stack
// pointer in *save_sp, switches to new_sp and restores the registers saved there.
// A new fiber's stack holds six register slots (r12 = its Fiber*) and the
// trampoline as the return address.
asm(R"(
    .text
    .p2align 4
    .globl emu_switch_context
    .hidden emu_switch_context
    .type emu_switch_context,@function
emu_switch_context:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size emu_switch_context, .-emu_switch_context

    .p2align 4
    .globl emu_fiber_trampoline
    .hidden emu_fiber_trampoline
    .type emu_fiber_trampoline,@function
emu_fiber_trampoline:
    movq %r12, %rdi
    call emu_fiber_main
    ud2
    .size emu_fiber_trampoline, .-emu_fiber_trampoline
)");
#endif

namespace emu {
namespace {

constexpr int kMaxThreads = 1024;

std::mutex g_mutex;  // options, reports, stats
Options g_options;
Stats g_stats;
// Race reports, one per (kind, code addresses): the first occurrence's text and a count.
struct Report {
  std::string text;
  int64_t count;
};
std::vector<Report> g_reports;
std::unordered_map<std::string, size_t> g_report_index;
constexpr size_t kMaxReports = 256;
// Read by every instrumented access: a plain global, so the common case (race
// mode off) costs a call, a load and a branch.
bool g_race_enabled = false;

std::string module_base_offset(const void* pc) {
  Dl_info info;
  std::ostringstream s;
  if (pc && dladdr(pc, &info) && info.dli_fbase) {
    s << "module+0x" << std::hex << (uintptr_t)pc - (uintptr_t)info.dli_fbase;
  } else {
    s << "pc " << pc;
  }
  return s.str();
}

void add_report(const char* kind, const void* pc1, const void* pc2, const std::string& text) {
  std::ostringstream key;
  key << kind << ' ' << pc1 << ' ' << pc2;
  std::lock_guard<std::mutex> lock(g_mutex);
  auto it = g_report_index.find(key.str());
  if (it != g_report_index.end()) {
    ++g_reports[it->second].count;
  } else if (g_reports.size() < kMaxReports) {
    g_report_index.emplace(key.str(), g_reports.size());
    g_reports.push_back({text, 1});
  }
}

// ------------------------------------------------------------ race state ----
struct SharedShadow {
  uint32_t block = 0;     // block epoch of the last access (0: never)
  uint32_t interval = 0;  // barrier interval of the fields below
  int32_t writer = -1;    // plain writer in this interval
  int32_t reader = -1;    // a plain reader in this interval
  int32_t atomic = -1;    // atomic user in this interval (-2: several)
  uint8_t many_readers = 0;
  uint8_t initialised = 0;  // written in this block
  const void* writer_pc = nullptr;
  const void* reader_pc = nullptr;
};

struct GlobalShadow {
  int64_t plain_block = -1;   // -2: reported
  int64_t atomic_block = -1;  // -2: several
  const void* pc = nullptr;
};

struct RaceState {
  bool active = false;
  uintptr_t shared_lo = 0, shared_hi = 0;
  uintptr_t stack_lo = 0, stack_hi = 0;
  std::vector<SharedShadow> shadow;
  uint32_t block_epoch = 0;
  uint32_t interval = 1;
  int64_t block_linear = 0;
  uint3 block_idx = {0, 0, 0};
};

// -------------------------------------------------------------- blocks ----
struct Block {
  const Launch* launch = nullptr;
  uint3 idx = {0, 0, 0};
  int n = 0, live = 0, nwarps = 0;
  std::vector<Fiber> fibers;
  std::vector<int> order, pos_of;
  int cur_pos = 0;
  bool bar_active = false;
  int bar_kind = 0;
  const char* bar_file = nullptr;
  int bar_line = 0;
  int bar_waiting = 0;
  uint64_t bar_acc = 0;
  std::vector<WarpWait> warps;
  std::string error;
  void* main_sp = nullptr;
#if !defined(__x86_64__)
  ucontext_t main_uc;
#endif
  std::mt19937_64 rng;
  int order_mode = kAscending;
  int64_t barriers = 0, collectives = 0, switches = 0;
};

// Per OS thread: the fiber stacks (with a guard page below each) and the block.
struct Executor {
  char* region = nullptr;
  size_t region_bytes = 0, slot_bytes = 0;
  int slots = 0;
  Block block;
  RaceState race;

  ~Executor() {
    if (region) munmap(region, region_bytes);
  }
  void ensure(int n, size_t stack_bytes) {
    const size_t page = (size_t)sysconf(_SC_PAGESIZE);
    stack_bytes = (stack_bytes + page - 1) / page * page;
    if (region && n <= slots && slot_bytes == stack_bytes + page) return;
    if (region) munmap(region, region_bytes);
    slot_bytes = stack_bytes + page;
    slots = std::max(n, 256);
    region_bytes = slot_bytes * slots;
    void* p = mmap(nullptr, region_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("emu: cannot map the fiber stacks");
    region = static_cast<char*>(p);
    for (int i = 0; i < slots; ++i) mprotect(region + i * slot_bytes, page, PROT_NONE);  // guard
  }
  char* stack_top(int i) const { return region + (size_t)(i + 1) * slot_bytes; }
};

thread_local Executor* tl_executor = nullptr;
thread_local Block* tl_block = nullptr;
thread_local Fiber* tl_cur = nullptr;

Executor& executor() {
  if (!tl_executor) tl_executor = new Executor();  // one per OS thread, kept for its life
  return *tl_executor;
}

std::string dim_str(uint3 v) {
  std::ostringstream s;
  s << "(" << v.x << "," << v.y << "," << v.z << ")";
  return s.str();
}

std::string thread_str(const Block& b, const Fiber& f) {
  return "thread " + dim_str(f.idx) + " (lane " + std::to_string(f.tid & 31) + " of warp " +
         std::to_string(f.tid >> 5) + ")";
}

const char* collective_name(int kind) {
  switch (kind) {
    case kShflXor: return "__shfl_xor_sync";
    case kShflIdx: return "__shfl_sync";
    case kShflUp: return "__shfl_up_sync";
    case kShflDown: return "__shfl_down_sync";
    case kAny: return "__any_sync";
    case kAll: return "__all_sync";
    case kBallot: return "__ballot_sync";
    case kSyncWarp: return "__syncwarp";
  }
  return "collective";
}
// Barrier kinds: 0 plain, 1 count, 2 and, 3 or.
const char* barrier_name(int kind) {
  switch (kind) {
    case 1: return "__syncthreads_count";
    case 2: return "__syncthreads_and";
    case 3: return "__syncthreads_or";
  }
  return "__syncthreads";
}

std::string site(const char* name, const char* file, int line) {
  return std::string(name) + " at " + (file ? file : "?") + ":" + std::to_string(line);
}

bool same_site(const char* f1, int l1, const char* f2, int l2) {
  return l1 == l2 && (f1 == f2 || std::strcmp(f1, f2) == 0);
}

void switch_fiber(Block& b, Fiber* from, Fiber* to) {
  ++b.switches;
  tl_cur = to;
  b.cur_pos = b.pos_of[to->tid];
#if defined(__x86_64__)
  emu_switch_context(&from->sp, to->sp);
#else
  swapcontext(&from->uc, &to->uc);
#endif
}

[[noreturn]] void to_main(Block& b, Fiber* from) {
  tl_cur = nullptr;
#if defined(__x86_64__)
  emu_switch_context(&from->sp, b.main_sp);
#else
  swapcontext(&from->uc, &b.main_uc);
#endif
  __builtin_unreachable();  // a fiber that went back to the block's runner is never resumed
}

[[noreturn]] void fail(Block& b, Fiber* self, const std::string& what) {
  if (b.error.empty()) {
    b.error = "block " + dim_str(b.idx) + ", " + thread_str(b, *self) + ": " + what;
  }
  to_main(b, self);
}

std::string deadlock_report(const Block& b) {
  std::ostringstream s;
  s << "block " << dim_str(b.idx) << ": deadlock, no thread can proceed;";
  if (b.bar_active) {
    s << " " << b.bar_waiting << " of " << b.live << " live threads wait at "
      << site(barrier_name(b.bar_kind), b.bar_file, b.bar_line) << ";";
  }
  for (int w = 0; w < b.nwarps; ++w) {
    const WarpWait& ww = b.warps[w];
    if (!ww.active) continue;
    s << " warp " << w << " waits at " << site(collective_name(ww.kind), ww.file, ww.line) << " for lanes";
    for (int l = 0; l < 32; ++l) {
      if ((ww.mask >> l & 1) && !(ww.arrived >> l & 1)) {
        const Fiber& f = b.fibers[w * 32 + l];
        s << " " << l << (f.state == kExited ? "(exited)" : f.state == kAtBarrier ? "(at the barrier)" : "");
      }
    }
    s << ";";
  }
  return s.str();
}

Fiber* pick_next(Block& b) {
  for (int k = 1; k <= b.n; ++k) {
    int p = b.cur_pos + k;
    if (p >= b.n) p -= b.n;
    Fiber& f = b.fibers[b.order[p]];
    if (f.state == kRunnable) return &f;
  }
  return nullptr;
}

// The current fiber cannot go on (or was just made runnable again after a
// release): run the next runnable thread, or go back to the block's runner.
void reschedule(Block& b, Fiber* self) {
  Fiber* next = pick_next(b);
  if (next == self) {
    b.cur_pos = b.pos_of[self->tid];
    return;
  }
  if (next) {
    switch_fiber(b, self, next);
    return;
  }
  if (b.live > 0 && b.error.empty()) b.error = deadlock_report(b);
  to_main(b, self);
}

void new_order(Block& b) {
  if (b.order_mode == kRandom) {
    std::shuffle(b.order.begin(), b.order.end(), b.rng);
    for (int p = 0; p < b.n; ++p) b.pos_of[b.order[p]] = p;
  }
}

void release_barrier(Block& b) {
  ++b.barriers;
  for (Fiber& f : b.fibers) {
    if (f.state == kAtBarrier) {
      f.state = kRunnable;
      f.result = b.bar_acc;
    }
  }
  b.bar_active = false;
  b.bar_waiting = 0;
  Executor& ex = executor();
  ++ex.race.interval;
  new_order(b);
  b.cur_pos = b.n - 1;  // the next pick starts at the head of the order
}

unsigned existing_lanes(const Block& b, int warp) {
  const int count = std::min(32, b.n - warp * 32);
  return count >= 32 ? 0xffffffffu : ((1u << count) - 1u);
}

}  // namespace
}  // namespace emu

extern "C" EMU_HIDDEN void emu_fiber_main(emu::Fiber* f) {
  using namespace emu;
  Block& b = *tl_block;
  b.launch->entry(b.launch->data);
  // The thread returned from the kernel.
  f->state = kExited;
  --b.live;
  const int w = f->tid >> 5, lane = f->tid & 31;
  const WarpWait& ww = b.warps[w];
  if (ww.active && (ww.mask >> lane & 1)) {
    fail(b, f, "exited while lanes of its warp wait for it at " + site(collective_name(ww.kind), ww.file, ww.line));
  }
  if (b.bar_active && b.live > 0 && b.bar_waiting == b.live) release_barrier(b);
  reschedule(b, f);
  __builtin_unreachable();
}

namespace emu {
namespace {

void init_fiber(Executor& ex, Block& b, int i) {
  Fiber& f = b.fibers[i];
  f.state = kRunnable;
  f.full_collectives = 0;
  f.result = 0;
  char* top = ex.stack_top(i);
#if defined(__x86_64__)
  uint64_t* s = reinterpret_cast<uint64_t*>(top - 72);  // 8 mod 16: aligned after the pops and ret
  s[0] = 0;                                             // r15
  s[1] = 0;                                             // r14
  s[2] = 0;                                             // r13
  s[3] = reinterpret_cast<uint64_t>(&f);                // r12: the trampoline's argument
  s[4] = 0;                                             // rbx
  s[5] = 0;                                             // rbp
  s[6] = reinterpret_cast<uint64_t>(&emu_fiber_trampoline);
  f.sp = s;
#else
  getcontext(&f.uc);
  f.uc.uc_stack.ss_sp = top - (ex.slot_bytes - (size_t)sysconf(_SC_PAGESIZE));
  f.uc.uc_stack.ss_size = ex.slot_bytes - (size_t)sysconf(_SC_PAGESIZE);
  f.uc.uc_link = nullptr;
  makecontext(&f.uc, (void (*)())emu_fiber_main, 1, &f);  // pointer through an int argument: glibc x86-64/aarch64 pass 64 bits
#endif
}

// The calling thread's thread-local block of this module: where __shared__
// variables live.
struct TlsFind {
  uintptr_t addr;
  uintptr_t lo = 0, hi = 0;
};

int find_tls(struct dl_phdr_info* info, size_t, void* data) {
  TlsFind* t = static_cast<TlsFind*>(data);
  bool mine = false;
  size_t tls_size = 0;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type == PT_LOAD) {
      const uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
      if (t->addr >= lo && t->addr < lo + ph.p_memsz) mine = true;
    } else if (ph.p_type == PT_TLS) {
      tls_size = ph.p_memsz;
    }
  }
  if (!mine) return 0;
  if (info->dlpi_tls_data && tls_size) {
    t->lo = reinterpret_cast<uintptr_t>(info->dlpi_tls_data);
    t->hi = t->lo + tls_size;
  }
  return 1;
}

void race_begin_block(Executor& ex, Block& b, int64_t linear) {
  RaceState& r = ex.race;
  if (r.shared_hi == 0) {
    TlsFind t{reinterpret_cast<uintptr_t>(&find_tls)};
    (void)tl_cur;  // the module's TLS block is allocated in this thread by now
    dl_iterate_phdr(find_tls, &t);
    if (t.hi == 0) throw std::runtime_error("emu: race mode cannot find the module's thread-local block");
    r.shared_lo = t.lo;
    r.shared_hi = t.hi;
    r.shadow.assign((t.hi - t.lo) / 4 + 1, SharedShadow{});
  }
  r.stack_lo = reinterpret_cast<uintptr_t>(ex.region);
  r.stack_hi = r.stack_lo + ex.region_bytes;
  ++r.block_epoch;
  ++r.interval;
  r.block_linear = linear;
  r.block_idx = b.idx;
  r.active = true;
}

void run_block(Executor& ex, const Launch& L, uint3 bidx, int64_t linear, const Options& o) {
  Block& b = ex.block;
  const int n = (int)(L.block.x * L.block.y * L.block.z);
  ex.ensure(n, (size_t)o.stack_bytes);
  b.launch = &L;
  b.idx = bidx;
  b.n = n;
  b.live = n;
  b.nwarps = (n + 31) / 32;
  b.fibers.resize(n);
  b.order.resize(n);
  b.pos_of.resize(n);
  b.warps.assign(b.nwarps, WarpWait{});
  b.bar_active = false;
  b.bar_waiting = 0;
  b.error.clear();
  b.order_mode = o.order;
  b.rng.seed(o.seed * 0x9E3779B97F4A7C15ull + (uint64_t)linear);
  b.barriers = b.collectives = b.switches = 0;
  for (int i = 0; i < n; ++i) {
    Fiber& f = b.fibers[i];
    f.tid = i;
    f.idx = {i % L.block.x, (i / L.block.x) % L.block.y, i / (L.block.x * L.block.y)};
    init_fiber(ex, b, i);
    b.order[i] = o.order == kDescending ? n - 1 - i : i;
  }
  new_order(b);
  for (int p = 0; p < n; ++p) b.pos_of[b.order[p]] = p;
  if (o.race) race_begin_block(ex, b, linear);

  tl_block = &b;
  Fiber* first = &b.fibers[b.order[0]];
  b.cur_pos = 0;
  tl_cur = first;
#if defined(__x86_64__)
  emu_switch_context(&b.main_sp, first->sp);
#else
  swapcontext(&b.main_uc, &first->uc);
#endif
  tl_cur = nullptr;
  tl_block = nullptr;
  ex.race.active = false;
}

std::unordered_map<uintptr_t, GlobalShadow> g_global_shadow;  // race mode: one block at a time

}  // namespace

// ------------------------------------------------------------- builtins ----
uint3 thread_idx() { return tl_cur->idx; }
uint3 block_idx() { return tl_block->idx; }
dim3 block_dim() { return tl_block->launch->block; }
dim3 grid_dim() { return tl_block->launch->grid; }

namespace {

Block& current(const char* what) {
  if (!tl_block || !tl_cur) {
    throw std::runtime_error(std::string("emu: ") + what + " called outside an emulated kernel");
  }
  return *tl_block;
}

uint64_t barrier(int kind, int pred, const char* file, int line) {
  Block& b = current(barrier_name(kind));
  Fiber* self = tl_cur;
  const WarpWait& ww = b.warps[self->tid >> 5];
  if (ww.active && (ww.mask >> (self->tid & 31) & 1)) {
    fail(b, self, "reached " + site(barrier_name(kind), file, line) + " while lanes of its warp wait for it at " +
                      site(collective_name(ww.kind), ww.file, ww.line));
  }
  if (b.bar_active) {
    if (b.bar_kind != kind || !same_site(b.bar_file, b.bar_line, file, line)) {
      fail(b, self, "reached " + site(barrier_name(kind), file, line) + " while " + std::to_string(b.bar_waiting) +
                        " threads wait at " + site(barrier_name(b.bar_kind), b.bar_file, b.bar_line) +
                        " (a barrier in divergent code)");
    }
  } else {
    b.bar_active = true;
    b.bar_kind = kind;
    b.bar_file = file;
    b.bar_line = line;
    b.bar_waiting = 0;
    b.bar_acc = kind == 2 ? 1 : 0;
  }
  if (kind == 1) b.bar_acc += pred ? 1 : 0;
  if (kind == 2) b.bar_acc &= pred ? 1 : 0;
  if (kind == 3) b.bar_acc |= pred ? 1 : 0;
  self->state = kAtBarrier;
  self->file = file;
  self->line = line;
  ++b.bar_waiting;
  if (b.bar_waiting == b.live) release_barrier(b);
  reschedule(b, self);
  return self->result;
}

}  // namespace

void syncthreads(const char* file, int line) { barrier(0, 0, file, line); }
int syncthreads_count(int pred, const char* file, int line) { return (int)barrier(1, pred, file, line); }
int syncthreads_and(int pred, const char* file, int line) { return (int)barrier(2, pred, file, line); }
int syncthreads_or(int pred, const char* file, int line) { return (int)barrier(3, pred, file, line); }

uint64_t warp_collective(int kind, unsigned mask, uint64_t value, int arg, int width, const char* file, int line) {
  Block& b = current(collective_name(kind));
  Fiber* self = tl_cur;
  const int w = self->tid >> 5, lane = self->tid & 31;
  const unsigned exist = existing_lanes(b, w);
  const std::string here = site(collective_name(kind), file, line);
  if (!(mask >> lane & 1)) fail(b, self, "calls " + here + " with a mask that does not name its own lane");
  if (mask & ~exist) fail(b, self, "calls " + here + " with a mask naming lanes that do not exist in its warp");
  if (width < 1 || width > 32 || (width & (width - 1))) fail(b, self, "calls " + here + " with an invalid width");
  WarpWait& ww = b.warps[w];
  const bool full = mask == exist;
  if (!ww.active) {
    ww.active = true;
    ww.kind = kind;
    ww.file = file;
    ww.line = line;
    ww.mask = mask;
    ww.arrived = 0;
    ww.width = width;
    ww.full_count = self->full_collectives;
    for (int l = 0; l < 32; ++l) {
      if (!(mask >> l & 1) || l == lane) continue;
      const Fiber& o = b.fibers[w * 32 + l];
      if (o.state == kExited) fail(b, self, "calls " + here + " but lane " + std::to_string(l) + " of its mask has exited");
      if (o.state == kAtBarrier) {
        fail(b, self, "calls " + here + " but lane " + std::to_string(l) + " of its mask waits at " +
                          site(barrier_name(b.bar_kind), o.file, o.line));
      }
    }
  } else {
    if (ww.kind != kind || !same_site(ww.file, ww.line, file, line)) {
      fail(b, self, "calls " + here + " while other lanes of its warp wait at " +
                        site(collective_name(ww.kind), ww.file, ww.line) + " (a collective in divergent code)");
    }
    if (ww.mask != mask || ww.width != width) {
      fail(b, self, "calls " + here + " with a mask or width different from the other lanes'");
    }
    if (full && ww.full_count != self->full_collectives) {
      fail(b, self, "calls " + here + " as its full-warp collective number " +
                        std::to_string(self->full_collectives + 1) + ", the waiting lanes as their number " +
                        std::to_string(ww.full_count + 1) + " (a lane skipped a collective)");
    }
  }
  if (full) ++self->full_collectives;
  self->value = value;
  self->arg = arg;
  self->state = kAtCollective;
  self->file = file;
  self->line = line;
  ww.arrived |= 1u << lane;
  if (ww.arrived != ww.mask) {
    reschedule(b, self);
    return self->result;
  }
  // Every lane of the mask is here: compute the results and release them.
  ++b.collectives;
  uint64_t reduced = kind == kAll ? 1 : 0;
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1)) continue;
    const uint64_t v = b.fibers[w * 32 + l].value;
    if (kind == kAny) reduced |= v ? 1 : 0;
    if (kind == kAll) reduced &= v ? 1 : 0;
    if (kind == kBallot && v) reduced |= 1ull << l;
  }
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1)) continue;
    Fiber& f = b.fibers[w * 32 + l];
    const int seg = l & ~(width - 1);
    int src = l;
    switch (kind) {
      case kShflXor: src = l ^ f.arg; if (src >= seg + width) src = l; break;
      case kShflIdx: src = seg + (f.arg & (width - 1)); break;
      case kShflUp: src = l - f.arg; if (src < seg) src = l; break;
      case kShflDown: src = l + f.arg; if (src >= seg + width) src = l; break;
      default: break;
    }
    if (kind <= kShflDown) {
      if (src < 0 || src > 31 || !(mask >> src & 1)) {
        fail(b, &f, "reads lane " + std::to_string(src) + " outside the mask in " +
                        site(collective_name(kind), file, line));
      }
      f.result = b.fibers[w * 32 + src].value;
    } else {
      f.result = reduced;
    }
    f.state = kRunnable;
  }
  ww.active = false;
  return self->result;
}

// --------------------------------------------------------- race tracking ----
namespace {

enum Access { kRead, kWrite, kAtomicRMW };

std::string shared_where(const RaceState& r, uintptr_t word) {
  std::ostringstream s;
  s << "shared word at thread-local offset 0x" << std::hex << (word - r.shared_lo);
  return s.str();
}

std::string tid_str(int tid) {
  const Block& b = *tl_block;
  return "thread " + dim_str(b.fibers[tid].idx);
}

void shared_access(RaceState& r, uintptr_t word, Access kind, int tid, const void* pc) {
  SharedShadow& s = r.shadow[(word - r.shared_lo) / 4];
  if (s.block != r.block_epoch) {
    s = SharedShadow{};
    s.block = r.block_epoch;
    s.interval = r.interval;
  } else if (s.interval != r.interval) {
    s.interval = r.interval;
    s.writer = s.reader = s.atomic = -1;
    s.many_readers = 0;
  }
  const std::string head = "race mode, block " + dim_str(r.block_idx) + ": ";
  const bool other_atomic = s.atomic == -2 || (s.atomic >= 0 && s.atomic != tid);
  if (kind == kRead) {
    if (!s.initialised) {
      add_report("uninit", pc, nullptr, head + "uninitialised read of " + shared_where(r, word) + " by " + tid_str(tid) + " at " +
                 module_base_offset(pc));
      s.initialised = 1;  // one report per word
    }
    if (s.writer >= 0 && s.writer != tid) {
      add_report("raw", s.writer_pc, pc, head + "race on " + shared_where(r, word) + ": written by " + tid_str(s.writer) + " at " +
                 module_base_offset(s.writer_pc) + ", read by " + tid_str(tid) + " at " + module_base_offset(pc) +
                 " with no barrier between");
    }
    if (other_atomic) {
      add_report("atomic-read", pc, nullptr, head + "plain read of " + shared_where(r, word) + " by " + tid_str(tid) + " at " +
                 module_base_offset(pc) + " while other threads update it atomically in the same barrier interval");
    }
    if (s.reader == -1) {
      s.reader = tid;
      s.reader_pc = pc;
    } else if (s.reader != tid) {
      s.many_readers = 1;
    }
    return;
  }
  if (kind == kWrite) {
    if (s.writer >= 0 && s.writer != tid) {
      add_report("waw", s.writer_pc, pc, head + "race on " + shared_where(r, word) + ": written by " + tid_str(s.writer) + " at " +
                 module_base_offset(s.writer_pc) + " and by " + tid_str(tid) + " at " + module_base_offset(pc) +
                 " with no barrier between");
    }
    if (s.reader >= 0 && (s.reader != tid || s.many_readers)) {
      add_report("war", s.reader_pc, pc, head + "race on " + shared_where(r, word) + ": read by " + tid_str(s.reader) + " at " +
                 module_base_offset(s.reader_pc) + ", then written by " + tid_str(tid) + " at " +
                 module_base_offset(pc) + " with no barrier between");
    }
    if (other_atomic) {
      add_report("atomic-write", pc, nullptr, head + "plain write of " + shared_where(r, word) + " by " + tid_str(tid) + " at " +
                 module_base_offset(pc) + " while other threads update it atomically in the same barrier interval");
    }
    s.writer = tid;
    s.writer_pc = pc;
    s.initialised = 1;
    return;
  }
  // atomic read-modify-write
  if (!s.initialised) {
    add_report("atomic-uninit", pc, nullptr, head + "atomic on uninitialised " + shared_where(r, word) + " by " + tid_str(tid) + " at " +
               module_base_offset(pc));
    s.initialised = 1;
  }
  if ((s.writer >= 0 && s.writer != tid) || (s.reader >= 0 && (s.reader != tid || s.many_readers))) {
    add_report("atomic-mixed", pc, nullptr, head + "atomic update of " + shared_where(r, word) + " by " + tid_str(tid) + " at " +
               module_base_offset(pc) + " mixed with plain accesses by other threads in the same barrier interval");
  }
  s.atomic = (s.atomic == -1 || s.atomic == tid) ? tid : -2;
}

void global_write(RaceState& r, uintptr_t word, bool atomic, const void* pc) {
  GlobalShadow& g = g_global_shadow[word];
  const int64_t blk = r.block_linear;
  auto conflict = [&](const char* what) {
    const int64_t earlier = g.plain_block >= 0 ? g.plain_block : g.atomic_block;
    std::ostringstream s;
    s << "race mode: " << what << " of global address 0x" << std::hex << word << std::dec << ": block ";
    if (earlier >= 0) {
      const dim3 grid = tl_block->launch->grid;
      s << dim_str({(unsigned)(earlier % grid.x), (unsigned)((earlier / grid.x) % grid.y),
                    (unsigned)(earlier / ((int64_t)grid.x * grid.y))});
    } else {
      s << "(several)";
    }
    s << (g.plain_block >= 0 ? " wrote it" : " updated it atomically") << " at " << module_base_offset(g.pc)
      << ", then block " << dim_str(r.block_idx) << (atomic ? " updated it atomically" : " wrote it") << " at "
      << module_base_offset(pc) << ", in the same launch";
    add_report("global", pc, g.pc, s.str());
  };
  if (atomic) {
    if (g.plain_block >= 0 && g.plain_block != blk) {
      conflict("atomic update after a plain write");
      g.plain_block = -2;
    }
    if (g.atomic_block == -1) {
      g.atomic_block = blk;
      if (g.plain_block == -1) g.pc = pc;
    } else if (g.atomic_block != blk) {
      g.atomic_block = -2;
    }
    return;
  }
  if (g.plain_block == -2) return;  // reported
  if ((g.plain_block >= 0 && g.plain_block != blk) || g.atomic_block == -2 ||
      (g.atomic_block >= 0 && g.atomic_block != blk)) {
    conflict(g.plain_block >= 0 ? "non-atomic writes" : "non-atomic write after atomic updates");
    g.plain_block = -2;
    return;
  }
  g.plain_block = blk;
  g.pc = pc;
}

inline void on_access(const void* addr, size_t size, Access kind, const void* pc) {
  if (!tl_executor) return;
  RaceState& r = tl_executor->race;
  if (!r.active || !tl_cur) return;
  const uintptr_t a = reinterpret_cast<uintptr_t>(addr);
  if (a >= r.stack_lo && a < r.stack_hi) return;  // a thread's own stack
  const uintptr_t first = a & ~(uintptr_t)3, last = (a + (size ? size : 1) - 1) & ~(uintptr_t)3;
  if (a >= r.shared_lo && a < r.shared_hi) {
    for (uintptr_t w = first; w <= last && w < r.shared_hi; w += 4) shared_access(r, w, kind, tl_cur->tid, pc);
    return;
  }
  if (kind == kRead) return;
  for (uintptr_t w = first; w <= last; w += 4) global_write(r, w, kind == kAtomicRMW, pc);
}

inline void on_atomic(const void* addr, size_t size, const void* pc) {
  if (__builtin_expect(g_race_enabled, 0)) on_access(addr, size, kAtomicRMW, pc);
}

template <typename T, typename F>
T atomic_rmw(T* a, F f) {
  // CAS loop over the bits, so that floats work too; blocks may run in parallel.
  using Bits = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;
  Bits* p = reinterpret_cast<Bits*>(a);
  Bits old_bits = __atomic_load_n(p, __ATOMIC_RELAXED);
  for (;;) {
    const T old = from_bits<T>(old_bits);
    const T nv = f(old);
    const Bits new_bits = (Bits)to_bits(nv);
    if (__atomic_compare_exchange_n(p, &old_bits, new_bits, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) return old;
  }
}

}  // namespace

#define EMU_ATOMIC_PC __builtin_return_address(0)
float atomic_add_f32(float* a, float v) {
  on_atomic(a, 4, EMU_ATOMIC_PC);
  return atomic_rmw(a, [v](float o) { return o + v; });
}
double atomic_add_f64(double* a, double v) {
  on_atomic(a, 8, EMU_ATOMIC_PC);
  return atomic_rmw(a, [v](double o) { return o + v; });
}
int atomic_add_i32(int* a, int v) {
  on_atomic(a, 4, EMU_ATOMIC_PC);
  return __atomic_fetch_add(a, v, __ATOMIC_RELAXED);
}
unsigned atomic_add_u32(unsigned* a, unsigned v) {
  on_atomic(a, 4, EMU_ATOMIC_PC);
  return __atomic_fetch_add(a, v, __ATOMIC_RELAXED);
}
unsigned long long atomic_add_u64(unsigned long long* a, unsigned long long v) {
  on_atomic(a, 8, EMU_ATOMIC_PC);
  return __atomic_fetch_add(a, v, __ATOMIC_RELAXED);
}
int atomic_max_i32(int* a, int v) {
  on_atomic(a, 4, EMU_ATOMIC_PC);
  return atomic_rmw(a, [v](int o) { return o > v ? o : v; });
}
unsigned atomic_max_u32(unsigned* a, unsigned v) {
  on_atomic(a, 4, EMU_ATOMIC_PC);
  return atomic_rmw(a, [v](unsigned o) { return o > v ? o : v; });
}
int atomic_min_i32(int* a, int v) {
  on_atomic(a, 4, EMU_ATOMIC_PC);
  return atomic_rmw(a, [v](int o) { return o < v ? o : v; });
}
int atomic_cas_i32(int* a, int compare, int v) {
  on_atomic(a, 4, EMU_ATOMIC_PC);
  int expected = compare;
  __atomic_compare_exchange_n(a, &expected, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return expected;
}
int atomic_exch_i32(int* a, int v) {
  on_atomic(a, 4, EMU_ATOMIC_PC);
  return __atomic_exchange_n(a, v, __ATOMIC_RELAXED);
}

// --------------------------------------------------------------- launch ----
void launch(const Launch& L) {
  const int64_t n = (int64_t)L.block.x * L.block.y * L.block.z;
  if (L.block.x == 0 || L.block.y == 0 || L.block.z == 0 || n > kMaxThreads || L.block.z > 64) {
    throw std::runtime_error("emu: invalid block size " + dim_str({L.block.x, L.block.y, L.block.z}));
  }
  if (L.grid.x == 0 || L.grid.y == 0 || L.grid.z == 0 || L.grid.x > 2147483647u || L.grid.y > 65535 ||
      L.grid.z > 65535) {
    throw std::runtime_error("emu: invalid grid size " + dim_str({L.grid.x, L.grid.y, L.grid.z}));
  }
  if (L.shared_bytes > 0) throw std::runtime_error("emu: dynamic shared memory is not emulated");
  const Options o = options();
  const int64_t nblocks = (int64_t)L.grid.x * L.grid.y * L.grid.z;
  std::vector<int64_t> blocks(nblocks);
  for (int64_t i = 0; i < nblocks; ++i) blocks[i] = o.order == kDescending ? nblocks - 1 - i : i;
  if (o.order == kRandom) {
    std::mt19937_64 rng(o.seed ^ 0x5851F42D4C957F2Dull);
    std::shuffle(blocks.begin(), blocks.end(), rng);
  }
  if (o.race) g_global_shadow.clear();
  g_race_enabled = o.race;
  std::string first_error;
  int64_t first_error_at = -1;
  std::atomic<bool> failed{false};
  int64_t barriers = 0, collectives = 0, switches = 0;
  const int threads = o.race ? 1 : std::max(1, o.threads);
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads) reduction(+ : barriers, collectives, switches) if (threads > 1)
  for (int64_t i = 0; i < nblocks; ++i) {
    if (failed.load(std::memory_order_relaxed)) continue;
    const int64_t lin = blocks[i];
    const uint3 bidx = {(unsigned)(lin % L.grid.x), (unsigned)((lin / L.grid.x) % L.grid.y),
                        (unsigned)(lin / ((int64_t)L.grid.x * L.grid.y))};
    Executor& ex = executor();
    run_block(ex, L, bidx, lin, o);
    barriers += ex.block.barriers;
    collectives += ex.block.collectives;
    switches += ex.block.switches;
    if (!ex.block.error.empty()) {
      std::lock_guard<std::mutex> lock(g_mutex);
      if (first_error_at < 0 || lin < first_error_at) {
        first_error = ex.block.error;
        first_error_at = lin;
      }
      failed = true;
    }
  }
  g_race_enabled = false;
  if (o.race) g_global_shadow.clear();
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    ++g_stats.launches;
    g_stats.blocks += nblocks;
    g_stats.threads += nblocks * n;
    g_stats.barriers += barriers;
    g_stats.collectives += collectives;
    g_stats.switches += switches;
  }
  if (failed) {
    Dl_info info;
    std::string where = module_base_offset(L.kernel);
    if (dladdr(L.kernel, &info) && info.dli_sname && info.dli_saddr == L.kernel) where = info.dli_sname;
    throw std::runtime_error("emulated CUDA kernel (" + where + ", grid " + dim_str({L.grid.x, L.grid.y, L.grid.z}) +
                             ", block " + dim_str({L.block.x, L.block.y, L.block.z}) + "): " + first_error);
  }
}

// ------------------------------------------------------------- controls ----
void set_options(const Options& o) {
  if (o.order < kAscending || o.order > kRandom) throw std::invalid_argument("emu: order must be 0, 1 or 2");
  if (o.threads < 1) throw std::invalid_argument("emu: threads must be >= 1");
  if (o.stack_bytes < 16 * 1024) throw std::invalid_argument("emu: stack_bytes must be >= 16 KiB");
  std::lock_guard<std::mutex> lock(g_mutex);
  g_options = o;
}
Options options() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_options;
}
Stats stats() {
  std::lock_guard<std::mutex> lock(g_mutex);
  return g_stats;
}
void reset_stats() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_stats = Stats{};
}
std::vector<std::string> take_race_reports() {
  std::lock_guard<std::mutex> lock(g_mutex);
  std::vector<std::string> r;
  for (const Report& rep : g_reports) {
    r.push_back(rep.count > 1 ? rep.text + " [and " + std::to_string(rep.count - 1) + " more like it]" : rep.text);
  }
  g_reports.clear();
  g_report_index.clear();
  return r;
}
std::string module_path() {
  Dl_info info;
  if (dladdr(reinterpret_cast<const void*>(&module_path), &info) && info.dli_fname) return info.dli_fname;
  return std::string();
}

}  // namespace emu

// ----------------------------------------------- ThreadSanitizer callbacks ----
// The kernel objects of a race-mode build are compiled with -fsanitize=thread
// (and --param=tsan-instrument-func-entry-exit=0); these replace libtsan.
extern "C" {
#define EMU_TSAN_ACCESS(N)                                                                          \
  EMU_HIDDEN void __tsan_read##N(void* a) {                                                         \
    if (__builtin_expect(emu::g_race_enabled, 0)) emu::on_access(a, N, emu::kRead, __builtin_return_address(0)); \
  }                                                                                                 \
  EMU_HIDDEN void __tsan_write##N(void* a) {                                                        \
    if (__builtin_expect(emu::g_race_enabled, 0)) emu::on_access(a, N, emu::kWrite, __builtin_return_address(0)); \
  }                                                                                                 \
  EMU_HIDDEN void __tsan_unaligned_read##N(void* a) {                                               \
    if (__builtin_expect(emu::g_race_enabled, 0)) emu::on_access(a, N, emu::kRead, __builtin_return_address(0)); \
  }                                                                                                 \
  EMU_HIDDEN void __tsan_unaligned_write##N(void* a) {                                              \
    if (__builtin_expect(emu::g_race_enabled, 0)) emu::on_access(a, N, emu::kWrite, __builtin_return_address(0)); \
  }                                                                                                 \
  EMU_HIDDEN void __tsan_volatile_read##N(void* a) {                                                \
    if (__builtin_expect(emu::g_race_enabled, 0)) emu::on_access(a, N, emu::kRead, __builtin_return_address(0)); \
  }                                                                                                 \
  EMU_HIDDEN void __tsan_volatile_write##N(void* a) {                                               \
    if (__builtin_expect(emu::g_race_enabled, 0)) emu::on_access(a, N, emu::kWrite, __builtin_return_address(0)); \
  }
EMU_TSAN_ACCESS(1)
EMU_TSAN_ACCESS(2)
EMU_TSAN_ACCESS(4)
EMU_TSAN_ACCESS(8)
EMU_TSAN_ACCESS(16)
#undef EMU_TSAN_ACCESS

EMU_HIDDEN void __tsan_read_range(void* a, unsigned long size) {
  if (__builtin_expect(emu::g_race_enabled, 0)) emu::on_access(a, size, emu::kRead, __builtin_return_address(0));
}
EMU_HIDDEN void __tsan_write_range(void* a, unsigned long size) {
  if (__builtin_expect(emu::g_race_enabled, 0)) emu::on_access(a, size, emu::kWrite, __builtin_return_address(0));
}
EMU_HIDDEN void __tsan_init() {}
EMU_HIDDEN void __tsan_func_entry(void*) {}
EMU_HIDDEN void __tsan_func_exit() {}
EMU_HIDDEN void __tsan_vptr_update(void**, void*) {}
EMU_HIDDEN void __tsan_vptr_read(void**) {}

// Atomics of host code in the instrumented objects (reference counts in the
// torch headers, for example): performed for real, sequentially consistent.
#define EMU_TSAN_ATOMIC(N, T)                                                                          \
  EMU_HIDDEN T __tsan_atomic##N##_load(const volatile T* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); } \
  EMU_HIDDEN void __tsan_atomic##N##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); } \
  EMU_HIDDEN T __tsan_atomic##N##_exchange(volatile T* a, T v, int) {                                   \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                               \
  }                                                                                                    \
  EMU_HIDDEN T __tsan_atomic##N##_fetch_add(volatile T* a, T v, int) {                                  \
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                \
  }                                                                                                    \
  EMU_HIDDEN T __tsan_atomic##N##_fetch_sub(volatile T* a, T v, int) {                                  \
    return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                                \
  }                                                                                                    \
  EMU_HIDDEN T __tsan_atomic##N##_fetch_and(volatile T* a, T v, int) {                                  \
    return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                                \
  }                                                                                                    \
  EMU_HIDDEN T __tsan_atomic##N##_fetch_or(volatile T* a, T v, int) {                                   \
    return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                                 \
  }                                                                                                    \
  EMU_HIDDEN T __tsan_atomic##N##_fetch_xor(volatile T* a, T v, int) {                                  \
    return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST);                                                \
  }                                                                                                    \
  EMU_HIDDEN T __tsan_atomic##N##_fetch_nand(volatile T* a, T v, int) {                                 \
    return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST);                                               \
  }                                                                                                    \
  EMU_HIDDEN int __tsan_atomic##N##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {       \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);           \
  }                                                                                                    \
  EMU_HIDDEN int __tsan_atomic##N##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {         \
    return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);            \
  }                                                                                                    \
  EMU_HIDDEN T __tsan_atomic##N##_compare_exchange_val(volatile T* a, T c, T v, int, int) {             \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                 \
    return c;                                                                                          \
  }
EMU_TSAN_ATOMIC(8, char)
EMU_TSAN_ATOMIC(16, short)
EMU_TSAN_ATOMIC(32, int)
EMU_TSAN_ATOMIC(64, long)
#undef EMU_TSAN_ATOMIC
EMU_HIDDEN void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
EMU_HIDDEN void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }
}
