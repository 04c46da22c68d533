// The emulator's controls, for the test module (module.cpp): schedule, race
// mode, and what the last launches reported.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace emu {

// Order in which the threads of a block are scheduled (and the blocks of a
// grid): ascending ids, descending ids, or a seeded random permutation, redrawn
// at every barrier.
enum Order : int { kAscending = 0, kDescending = 1, kRandom = 2 };

struct Options {
  int order = kAscending;
  uint64_t seed = 0;
  // Race mode: shadow tracking of shared memory per barrier interval and of
  // cross-block global writes (blocks then run one at a time).
  bool race = false;
  // OpenMP threads running blocks at the same time (1: one at a time).
  int threads = 1;
  // Bytes of stack per emulated thread.
  int64_t stack_bytes = 64 * 1024;
};

struct Stats {
  int64_t launches = 0, blocks = 0, threads = 0, barriers = 0, collectives = 0, switches = 0;
};

void set_options(const Options& o);
Options options();
Stats stats();
void reset_stats();
// Race-mode reports since the last call (each names the kind, block, threads and
// the code addresses as module+0xOFFSET; tests resolve these with addr2line).
std::vector<std::string> take_race_reports();
// Path of the shared object holding the emulated kernels (for addr2line).
std::string module_path();

}  // namespace emu
