// The SIMD blend kernels, written once over ATen's at::vec::Vectorized<float> and
// compiled once per instruction set: into feature3dgs._C for the baseline
// (blend_baseline.cpp: SSE2 on x86-64, NEON on aarch64) and into one extension
// module per wider ISA (isa/avx2.cpp, isa/avx512.cpp), each built with its own -m
// flags. The including file defines F3D_SIMD_NS (a namespace unique to the ISA)
// and F3D_SIMD_ISA (its name) and includes this header once.
//
// Layout: a tile is 16 rows of 16 pixels; one SIMD step covers the L = V::size()
// pixels of a chunk: 2 rows x 8 pixels with AVX-512 (16 lanes), 8 pixels of a row
// with AVX2 and the baseline, so a tile is 8 x 2 or 16 x 2 chunks. Per Gaussian the kernels visit only the chunks that
// f3d/cull.h cannot prove empty, evaluate alpha for the chunk's pixels at once
// (one vectorised exp), and skip or stop pixels with lane masks. The alpha, T and
// weight arithmetic repeats f3d/blend.h operation by operation (no FMA: the build
// uses -ffp-contract=off), so a pixel's blend differs from the scalar kernels only
// through the exp. Below L channels the features are blended across pixels like rgb;
// from L up as small register-blocked matrix products over per-chunk lists of the
// blending Gaussians and their weights (see "The feature blend as small matrix
// products" below).
#pragma once

#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cpu/kernels_api.h"
#include "f3d/blend.h"
#include "f3d/cull.h"

#ifndef F3D_SIMD_NS
#error "define F3D_SIMD_NS (and F3D_SIMD_ISA) before including cpu/blend_simd.h"
#endif

namespace f3d {
namespace F3D_SIMD_NS {
namespace {

using V = at::vec::Vectorized<float>;
constexpr int L = V::size();
// A chunk (one SIMD step) is kChunkRows x kChunkCols pixels. Two rows of 8 with 16
// lanes: a Gaussian's footprint covers more of a compact chunk, so the feature
// products (below) compute fewer lanes of zero weight than with 16-pixel row segments
// (65.8% of their lanes carry a weight on the benchmark scene against 53%).
constexpr int kChunkRows = L == 16 ? 2 : 1;
constexpr int kChunkCols = L / kChunkRows;
static_assert(kTileSize % kChunkCols == 0 && kTileSize % kChunkRows == 0 && L <= 16,
              "a tile must be a whole number of chunks");
constexpr int kChunksPerRow = kTileSize / kChunkCols;  // chunk columns of a tile
constexpr int kTilePixels = kTileSize * kTileSize;
// The tile's per-pixel state is kept in chunk order: chunk idx's L pixels at idx L,
// lane (r % kChunkRows) kChunkCols + col % kChunkCols (with one-row chunks: row-major).
constexpr int kChunkRowStride = kChunksPerRow * L;  // state floats per row of chunks
inline int chunk_row(int idx) { return idx / kChunksPerRow * kChunkRows; }  // its first pixel row
inline int chunk_col(int idx) { return idx % kChunksPerRow * kChunkCols; }  // and column
inline int state_index(int r, int col) {
  return (r / kChunkRows) * kChunkRowStride + (col / kChunkCols) * L + (r % kChunkRows) * kChunkCols + col % kChunkCols;
}
inline int state_row(int p) { return chunk_row(p / L) + p % L / kChunkCols; }
inline int state_col(int p) { return chunk_col(p / L) + p % L % kChunkCols; }
constexpr unsigned kFullMask = (1u << L) - 1u;
constexpr int kPrefetch = 4;  // list positions ahead to prefetch a Gaussian's PackedGaussian

// Each lane's pixel centre relative to its chunk's first pixel.
struct LaneCentres {
  alignas(64) float col[16];
  alignas(64) float row[16];
  constexpr LaneCentres() : col(), row() {
    for (int l = 0; l < 16; ++l) {
      col[l] = (float)(l % kChunkCols) + 0.5f;
      row[l] = (float)(l / kChunkCols) + 0.5f;
    }
  }
};
constexpr LaneCentres kLaneCentres{};

// Lanes of a mask vector (all bits set or zero) as the low L bits.
inline unsigned lanes(const V& m) { return ~(unsigned)m.zero_mask() & kFullMask; }
inline V select(const V& m, const V& if_true, const V& if_false) { return V::blendv(if_false, if_true, m); }
inline int popcount(unsigned b) { return __builtin_popcount(b); }
inline int lowest(unsigned b) { return __builtin_ctz(b); }

inline float lane_sum(const V& v) {
  return at::vec::vec_reduce_all<float>([](const V& x, const V& y) { return x + y; }, v);
}

// 64-byte aligned scratch of n floats (n may be 0).
struct Scratch {
  float* p = nullptr;
  explicit Scratch(int64_t n) {
    void* q = nullptr;
    if (posix_memalign(&q, 64, (size_t)(n > 0 ? n : 1) * sizeof(float)) == 0) p = static_cast<float*>(q);
  }
  ~Scratch() { free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// A growable array of trivially copyable T (no std containers here: their template
// instances would be exported from the ISA module, compiled with its instructions).
// resize keeps the contents and leaves new elements uninitialised.
template <typename T>
class Buffer {
 public:
  Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  ~Buffer() { free(p_); }
  T* data() { return p_; }
  const T* data() const { return p_; }
  size_t size() const { return n_; }
  bool empty() const { return n_ == 0; }
  T& operator[](size_t i) { return p_[i]; }
  const T& operator[](size_t i) const { return p_[i]; }
  void resize(size_t n) {
    if (n > cap_) {
      const size_t cap = n > 2 * cap_ ? n : 2 * cap_;
      void* q = nullptr;
      if (posix_memalign(&q, 64, cap * sizeof(T)) != 0) abort();
      if (n_) memcpy(q, p_, n_ * sizeof(T));
      free(p_);
      p_ = static_cast<T*>(q);
      cap_ = cap;
    }
    n_ = n;
  }
  void assign(size_t n, T v) {
    resize(n);
    for (size_t i = 0; i < n; ++i) p_[i] = v;
  }
  void push_back(T v) {
    resize(n_ + 1);
    p_[n_ - 1] = v;
  }

 private:
  T* p_ = nullptr;
  size_t n_ = 0, cap_ = 0;
};

struct Tile {
  int x0, y0, w, h;
  Tile(const CpuRasterInputs& in, int t) {
    x0 = (t % in.grid_x) * kTileSize;
    y0 = (t / in.grid_x) * kTileSize;
    w = in.width - x0 < kTileSize ? in.width - x0 : kTileSize;
    h = in.height - y0 < kTileSize ? in.height - y0 : kTileSize;
  }
};

using VD = at::vec::Vectorized<double>;
constexpr int LD = VD::size();
static_assert(kTileSize % LD == 0, "tile rows must be a whole number of double steps");
alignas(64) constexpr double kRowIndex[32] = {0.,  1.,  2.,  3.,  4.,  5.,  6.,  7.,  8.,  9.,  10.,
                                              11., 12., 13., 14., 15., 16., 17., 18., 19., 20., 21.,
                                              22., 23., 24., 25., 26., 27., 28., 29., 30., 31.};
// Whether the ellipse's rows miss the pixel-centre rows of the tile.
inline bool rows_missed(const Tile& tile, const CullSplat& cs, bool cull) {
  if (!cull || cs.kind != kCullTest) return cull && cs.kind == kCullNone;
  const double lo = tile.y0 + 0.5, hi = tile.y0 + tile.h - 0.5;
  return lo - cs.my > cs.ry || cs.my - hi > cs.ry;
}

// The chunks of the tile inside the image.
inline uint64_t tile_chunks(const Tile& tile) {
  const int row_chunks = (tile.w + kChunkCols - 1) / kChunkCols;
  uint64_t row_bits = 0;
  for (int k = 0; k < row_chunks; ++k) row_bits |= (uint64_t)1 << k;
  uint64_t all = 0;
  for (int r = 0; r < tile.h; r += kChunkRows) all |= row_bits << (r / kChunkRows * kChunksPerRow);
  return all;
}

// The chunks (bit idx = chunk row * kChunksPerRow + k: pixels [k kChunkCols, (k + 1)
// kChunkCols) of rows [chunk_row(idx), + kChunkRows)) of the tile where the Gaussian
// may contribute: all chunks inside the image (`all`) without culling; with it, none
// when its rows miss the tile's, else those with a row segment that f3d/cull.h cannot
// rule out (its exact segment minimum, evaluated for LD rows at once in double).
inline uint64_t live_chunks(const Tile& tile, uint64_t all, const CullSplat& cs, bool cull) {
  const int row_chunks = (tile.w + kChunkCols - 1) / kChunkCols;
  if (!cull || cs.kind == kCullKeep) return all;
  if (rows_missed(tile, cs, cull)) return 0;
  if (cs.kind == kCullNone) return 0;
  const VD a(cs.a), b2(2.0 * cs.b), c(cs.c), kx(cs.kx), t(cs.t);
  const VD dy0(tile.y0 + 0.5 - cs.my);
  uint64_t m = 0;
  for (int k = 0; k < row_chunks; ++k) {
    const int last_col = (k + 1) * kChunkCols < tile.w ? (k + 1) * kChunkCols - 1 : tile.w - 1;
    const VD lo(tile.x0 + k * kChunkCols + 0.5 - cs.mx), hi(tile.x0 + last_col + 0.5 - cs.mx);
    for (int r0 = 0; r0 < tile.h; r0 += LD) {
      const VD dy = dy0 + VD::loadu(kRowIndex + r0);
      const VD dx = at::vec::minimum(at::vec::maximum(kx * dy, lo), hi);
      const VD q = a * dx * dx + b2 * dx * dy + c * dy * dy;
      unsigned live = ~(unsigned)(q <= t).zero_mask() & ((1u << LD) - 1u);
      for (; live; live &= live - 1) m |= (uint64_t)1 << ((r0 + lowest(live)) / kChunkRows * kChunksPerRow + k);
    }
  }
  return m & all;
}

// One Gaussian at the L pixels of a chunk, as f3d::eval_splat computes it per pixel.
struct ChunkSplat {
  V dx, dy, G, alpha_raw, alpha, ok;  // ok: power <= 0 and alpha >= kAlphaMin (NaN: false)
};

// Chunk idx's pixel offsets from the mean, and alpha from G, in f3d::eval_splat's order
// (pixel + 0.5 - mean: the chunk's first pixel plus the lane's centre is exact).
inline void set_offsets(ChunkSplat& s, const Tile& tile, int idx, float mx, float my) {
  s.dx = (V((float)(tile.x0 + chunk_col(idx))) + V::loadu(kLaneCentres.col)) - V(mx);
  s.dy = (V((float)(tile.y0 + chunk_row(idx))) + V::loadu(kLaneCentres.row)) - V(my);
}
inline void set_alpha(ChunkSplat& s, const V& opacity, const V& G) {
  s.G = G;
  s.alpha_raw = opacity * s.G;
  s.alpha = select(s.alpha_raw > V(kAlphaMax), V(kAlphaMax), s.alpha_raw);
}

inline ChunkSplat eval_chunk(const Tile& tile, int idx, float mx, float my, const V& ca, const V& cb,
                             const V& cc, const V& opacity) {
  ChunkSplat s;
  set_offsets(s, tile, idx, mx, my);
  const V power = V(-0.5f) * (ca * s.dx * s.dx + cc * s.dy * s.dy) - cb * s.dx * s.dy;
  set_alpha(s, opacity, power.exp());
  s.ok = (power <= V(0.f)) & (s.alpha >= V(kAlphaMin));
  return s;
}

// The same from G where the chunk's blending lanes have it and 0 elsewhere (the
// backward's first pass keeps it so): every value equals eval_chunk's, and ok is
// exactly its lanes, since a blending lane has opacity * G >= kAlphaMin > 0.
inline ChunkSplat chunk_from_G(const Tile& tile, int idx, float mx, float my, const V& opacity, const V& G) {
  ChunkSplat s;
  set_offsets(s, tile, idx, mx, my);
  set_alpha(s, opacity, G);
  s.ok = s.G > V(0.f);
  return s;
}

// ---------------------------------------------------------------------------
// The feature blend as small matrix products. With C >= L channels the blend loop
// only records, per list block of the tile (kListRows chunks, one above the other:
// kListLanes = kListRows L pixels), the Gaussians that blended one of its pixels, in
// list order, with their kListLanes weights (0 in the lanes they did not blend); the
// features are then blended block by block as
//   out[c, lanes] = sum_e F[g_e, c] w_e[lanes]   (forward)
//   D[e, lanes] = sum_c F[g_e, c] dL/dout[c, lanes],  dL/dF[g_e, c] += sum_l w_e[l] dL/dout[c, l]
// (backward), register-blocked so that each loaded vector feeds many FMAs. Per pixel
// and channel the sums run in list order, as in the scalar kernels; they are fused
// multiply-adds, so they differ from those by rounding only.
//
// With 8 lanes a block is two rows (2 x 8 pixels), so that every broadcast feature
// value feeds two vectors: the forward's inner step is 2 vector + 4 broadcast loads
// for 8 FMAs instead of 1 + 8 for 8, which a one-row block needs (an isolated
// microbenchmark on a Zen 3 core: 85% of the FMA peak against 62%). With 16 lanes
// a block is one chunk (2 x 8 pixels): 16 pixels are already as many as the GEMM
// can share before too many of their weights are 0.
constexpr int kTileChunks = kTileSize / kChunkRows * kChunksPerRow;
constexpr int kListRows = L == 16 ? 1 : 2;
constexpr int kListLanes = kListRows * L;
constexpr int kTileLists = kTileChunks / kListRows;
static_assert(kTileSize / kChunkRows % kListRows == 0 && kListLanes <= 32, "list blocks tile the tile; masks fit 32 bits");
// The list block of chunk idx, and the vector of its entries that holds the chunk's
// lanes; the state index of list block j's first pixel (its vector v at + v
// kChunkRowStride).
inline int list_of(int idx) { return (idx / kChunksPerRow / kListRows) * kChunksPerRow + idx % kChunksPerRow; }
inline int vector_of(int idx) { return (idx / kChunksPerRow) % kListRows; }
inline int block_state(int j) { return (j / kChunksPerRow) * kListRows * kChunkRowStride + (j % kChunksPerRow) * L; }
// Register blocks: accumulators that fit the ISA's vector registers (32 with
// AVX-512, 16 otherwise) beside the operands.
constexpr int kChannelBlock = L;  // forward: channels packed per block (one vector)
constexpr int kChannelPass = L == 16 ? 16 : 4;   // forward: channels x kListRows vectors per pass
constexpr int kEntryBlock = L == 16 ? 12 : 6;    // backward D: list entries per pass over the channels
// Backward dL/dF: entries x kGradVectors channel vectors, over the lanes that one of the
// entries blends. With 16 lanes, blocks of 4 entries visit more lanes of 0 weight: with 2
// the backward's feature stage was 1.08x (C = 64) and 1.06x (C = 256) faster on a Zen 4
// core; with 1 it was 1.1x slower at C = 64 and 1.01-1.04x faster at C = 256.
constexpr int kGradBlock = 2;
constexpr int kGradVectors = 4;  // AVX-512: 8 accumulators, C = 64 in one pass; 8 lanes: 8, C = 64 in two

class ChunkLists {
 public:
  int size(int j) const { return n_[j]; }
  const int* ids(int j) const { return id_[j].data(); }
  float* weights(int j) { return w_[j].data(); }
  const float* weights(int j) const { return w_[j].data(); }
  float* dots(int j) { return d_[j].data(); }
  unsigned* masks(int j) { return mask_[j].data(); }
  const unsigned* masks(int j) const { return mask_[j].data(); }
  // The entry of list position k in block j, from the position the last call
  // returned on (entries are visited in list order, a block's rows in turn).
  int find(int j, int k) {
    int& e = cursor_[j];
    while (id_[j][e] != k) ++e;
    return e;
  }
  void clear() {
    for (int j = 0; j < kTileLists; ++j) n_[j] = cursor_[j] = 0;
  }
  // Forward: the weights of position k's entry in the block of chunk idx, appended
  // (all 0) unless it is the block's last one; the caller writes the chunk's L lanes
  // at the returned pointer.
  float* add(int idx, int k) {
    const int j = list_of(idx), e = entry(j, k, false);  // first: it may grow w_[j]
    return w_[j].data() + (int64_t)e * kListLanes + vector_of(idx) * L;
  }
  // Backward: marks the lanes `bits` of chunk idx as blended by position k, with
  // their Gaussian values G (0 in the other lanes) in its weight slot, which the blend
  // loop overwrites with the weights.
  void add_backward(int idx, int k, const V& G, unsigned bits) {
    const int j = list_of(idx), e = entry(j, k, true), v = vector_of(idx);
    G.store(w_[j].data() + (int64_t)e * kListLanes + v * L);
    mask_[j][e] |= bits << (v * L);
  }
  // Backward: room for the dot products of every entry of block j.
  void reserve_dots(int j) {
    if (d_[j].size() < id_[j].size() * kListLanes) d_[j].resize(id_[j].size() * kListLanes);
  }

 private:
  // The entry of position k in block j: the block's last one where it is k's (a
  // Gaussian's chunks come in turn), else a new one.
  int entry(int j, int k, bool backward) {
    if (kListRows == 1 || n_[j] == 0 || id_[j][n_[j] - 1] != k) append(j, k, backward);
    return n_[j] - 1;
  }
  void append(int j, int k, bool backward) {
    if (n_[j] == (int)id_[j].size()) {
      const size_t cap = id_[j].empty() ? 64 : 2 * id_[j].size();
      id_[j].resize(cap);
      w_[j].resize(cap * kListLanes);
      if (backward) mask_[j].resize(cap);
    }
    id_[j][n_[j]] = k;
    if (backward) mask_[j][n_[j]] = 0;
    if (kListRows > 1) memset(w_[j].data() + (int64_t)n_[j] * kListLanes, 0, sizeof(float) * kListLanes);
    ++n_[j];
  }
  Buffer<int> id_[kTileLists];        // position k in the tile's list (capacity: size())
  Buffer<float> w_[kTileLists];       // kListLanes weights per entry
  Buffer<float> d_[kTileLists];       // backward: kListLanes values of dL/dout . f per entry
  Buffer<unsigned> mask_[kTileLists]; // backward: lanes with a nonzero weight
  int n_[kTileLists] = {};
  int cursor_[kTileLists] = {};
};

// The channel blocks of C channels: kChannelBlock wide while they fit, then one
// each of the powers of two below for the rest.
struct ChannelBlocks {
  Buffer<int64_t> c0;
  Buffer<int> cb;
  explicit ChannelBlocks(int64_t C) {
    int64_t c = 0;
    for (; C - c >= kChannelBlock; c += kChannelBlock) add(c, kChannelBlock);
    for (int w = kChannelBlock / 2; w >= 1; w /= 2)
      if (C - c >= w) {
        add(c, w);
        c += w;
      }
  }
  int size() const { return (int)c0.size(); }
  void add(int64_t c, int w) {
    c0.push_back(c);
    cb.push_back(w);
  }
};

// Channel block b of the features of a tile's list positions [0, n) that blended a
// pixel (used[k]), packed: row k (cb[b] channels) at packed + k cb[b], a few KB that
// stay in L1 across the tile's list blocks. Packed block by block, right before that
// block's products: a whole tile's rows at once (n C floats: 700 KB at C = 256) do
// not fit L2 and would be written out to L3 and read back.
inline void pack_feature_block(const int* gid, const unsigned char* used, int n, const float* F, int64_t C,
                               int64_t c0, int cb, float* packed) {
  for (int k = 0; k < n; ++k) {
    if (k + kPrefetch < n && used[k + kPrefetch]) __builtin_prefetch(F + (int64_t)gid[k + kPrefetch] * C + c0);
    if (!used[k]) continue;
    const float* row = F + (int64_t)gid[k] * C + c0;
    float* dst = packed + (int64_t)k * cb;
    if (cb == L)  // a block is one vector, or less for the rest
      V::loadu(row).store(dst);
    else
      V::loadu(row, cb).store(dst, cb);
  }
}

// Stores a full vector of output features at p: where p is aligned to the vector, with
// a non-temporal (streaming) store, else a plain one. The (C, H, W) output is written
// once per forward, 16-float lines of each channel plane per tile row; the planes
// are H W floats apart, a multiple of 4 KiB for common sizes (512 x 512: 1 MiB), so a
// tile's rows of all channels fall into the same few L1 and L2 sets and plain stores
// spend most of their time reading lines for ownership and evicting them again
// (64 channels at 512 x 512 on AVX-512: the forward's feature stage 1.36x faster than
// with plain stores, benchmarks/results/cpu_throughput.json). Streaming stores need no reads and bypass the sets; the writing thread ends
// with store_fence() before the parallel region's barrier, which orders them.
inline void store_full(const V& v, float* p) {
#if defined(CPU_CAPABILITY_AVX512)
  if (((uintptr_t)p & 63) == 0) {
    _mm512_stream_ps(p, v);
    return;
  }
#elif defined(CPU_CAPABILITY_AVX2)
  if (((uintptr_t)p & 31) == 0) {
    _mm256_stream_ps(p, v);
    return;
  }
#endif
  v.store(p);
}
inline void store_fence() {
#if defined(CPU_CAPABILITY_AVX512) || defined(CPU_CAPABILITY_AVX2)
  _mm_sfence();
#endif
}

// The register blocks of the feature GEMMs: N x kListRows accumulators, each step
// adding a(n) b[v] for the kListRows vectors b at p (L floats apart).
template <int N>
inline void zero_block(V (&acc)[N][kListRows]) {
#pragma GCC unroll 16
  for (int n = 0; n < N; ++n)
#pragma GCC unroll 2
    for (int v = 0; v < kListRows; ++v) acc[n][v] = V(0.f);
}
template <int N, typename A>
inline void outer_product_step(V (&acc)[N][kListRows], const float* p, A&& a) {
  V b[kListRows];
#pragma GCC unroll 2
  for (int v = 0; v < kListRows; ++v) b[v] = V::loadu(p + v * L);
#pragma GCC unroll 16
  for (int n = 0; n < N; ++n) {
    const V an(a(n));
#pragma GCC unroll 2
    for (int v = 0; v < kListRows; ++v) acc[n][v] = at::vec::fmadd(an, b[v], acc[n][v]);
  }
}

// Channel i (< CB) of a list block = sum_e Fb[k_e][i] w_e over its m entries, front
// to back, stored at dst[i] + v row_stride for the block's first `rows` vectors v (the
// tile's stage, in L1; blend_tile_features streams whole lines from it); Fb: one packed
// block (row k at Fb + k CB), taken kChannelPass channels (times kListRows vectors of
// accumulators) at a time.
template <int CB>
inline void blend_features(const int* ks, const float* W, int m, const float* Fb, float* const* dst,
                           int64_t row_stride, int rows) {
  constexpr int CP = CB < kChannelPass ? CB : kChannelPass;
  static_assert(CB % CP == 0, "a block is whole passes");
  for (int h = 0; h < CB; h += CP) {
    V acc[CP][kListRows];
    zero_block(acc);
    for (int e = 0; e < m; ++e) {
      const float* f = Fb + (int64_t)ks[e] * CB + h;
      outer_product_step(acc, W + (int64_t)e * kListLanes, [f](int i) { return f[i]; });
    }
#pragma GCC unroll 16
    for (int i = 0; i < CP; ++i)
#pragma GCC unroll 2
      for (int v = 0; v < kListRows; ++v) {
        if (v >= rows) break;
        acc[i][v].store(dst[h + i] + v * row_stride);
      }
  }
}

inline void blend_block(int cb, const int* ks, const float* W, int m, const float* Fb, float* const* dst,
                        int64_t row_stride, int rows) {
  if (cb == kChannelBlock)
    blend_features<kChannelBlock>(ks, W, m, Fb, dst, row_stride, rows);
  else if (cb == 8)
    blend_features<8>(ks, W, m, Fb, dst, row_stride, rows);
  else if (cb == 4)
    blend_features<4>(ks, W, m, Fb, dst, row_stride, rows);
  else if (cb == 2)
    blend_features<2>(ks, W, m, Fb, dst, row_stride, rows);
  else
    blend_features<1>(ks, W, m, Fb, dst, row_stride, rows);
}

// The forward feature blend of a tile (its lists, and its n list positions: gid maps
// them to the Gaussians, used[k] where k blended a pixel), channel block by channel
// block (each packed into `packed`, n kChannelBlock floats) and list block by list
// block, straight into out_feat (C, H, W); where `seconds` is given, the time of the
// packing and of the products is added to it ([0], [1]). A chunk is 8 pixels of a row
// (half a 64-byte line of a channel plane) or 2 x 8 pixels (two half lines), and the
// other half of each line comes from the chunk beside it: streamed half lines would
// leave the write-combining buffers partly filled, and plain stores thrash the sets
// (store_full). So the products of a row of list blocks go to `stage` (channels x
// the block row's state, in L1), and full lines are streamed from there.
inline void blend_tile_features(const ChunkLists& lists, const Tile& tile, int width, const int* gid,
                                const unsigned char* used, int n, const float* F, int64_t C,
                                const ChannelBlocks& blocks, float* packed, float* out_feat, int64_t HW,
                                double* seconds) {
  static_assert(kChunkRows == 1 || (L == 16 && kChunkCols == 8), "two-row chunks: 16 lanes, two chunk columns");
  constexpr int kBlockRowState = kListRows * kChunkRowStride;  // state floats of a row of list blocks
  constexpr int kBlockRowPixels = kListRows * kChunkRows;      // pixel rows of a row of list blocks
  alignas(64) float stage[kChannelBlock * kBlockRowState];
  for (int b = 0; b < blocks.size(); ++b) {
    const int cb = blocks.cb[b];
    const double t0 = seconds ? omp_get_wtime() : 0.;
    pack_feature_block(gid, used, n, F, C, blocks.c0[b], cb, packed);
    const double t1 = seconds ? omp_get_wtime() : 0.;
    const float* Fb = packed;
    for (int r = 0; r < tile.h; r += kBlockRowPixels) {
      const int rows = tile.h - r < kBlockRowPixels ? tile.h - r : kBlockRowPixels;  // pixel rows inside
      const int vectors = (rows + kChunkRows - 1) / kChunkRows;                          // chunk rows inside
      float* dst[kChannelBlock];
      for (int q = 0; q * kChunkCols < tile.w; ++q) {
        const int j = list_of(r / kChunkRows * kChunksPerRow + q);
        for (int i = 0; i < cb; ++i) dst[i] = stage + (int64_t)i * kBlockRowState + q * L;
        blend_block(cb, lists.ids(j), lists.weights(j), lists.size(j), Fb, dst, kChunkRowStride, vectors);
      }
      for (int i = 0; i < cb; ++i)
        for (int v = 0; v < rows; ++v) {
          // Row v of the block row: lanes (v % kChunkRows) 8 of both chunk columns.
          const float* src = stage + (int64_t)i * kBlockRowState + state_index(v, 0);
          float* out = out_feat + (blocks.c0[b] + i) * HW + (int64_t)(tile.y0 + r + v) * width + tile.x0;
          if constexpr (L == 16) {
            // src[0, 8) then src[L, L + 8): the second chunk's half is 8 floats after
            // the first chunk's end, lanes 8-15 of the load at src + 8.
            const V line = V::set(V::loadu(src + 8), V::loadu(src), 8);
            if (tile.w < L)
              line.store(out, tile.w);
            else
              store_full(line, out);
          } else {
            for (int x = 0; x < tile.w; x += L) {
              if (tile.w - x < L)
                V::loadu(src + x).store(out + x, tile.w - x);
              else
                store_full(V::loadu(src + x), out + x);
            }
          }
        }
    }
    if (seconds) {
      seconds[0] += t1 - t0;
      seconds[1] += omp_get_wtime() - t1;
    }
  }
}

void forward(const CpuForwardArgs* args) {
  const CpuRasterInputs& in = args->in;
  const int64_t C = in.C;
  const int64_t HW = (int64_t)in.width * in.height;
  const int n_tiles = in.grid_x * in.grid_y;
  const bool count = args->stats != nullptr;
  const bool cull = in.cull != 0;
  // Fewer channels than lanes: features channel-major, blended across pixels like
  // rgb (measured faster below L channels, slower from 64 up).
  const bool lane_feat = C < L;
  int64_t visited = 0, contributing = 0, list_lanes = 0;
  double gather_s = 0., gemm_s = 0.;  // counted: the feature GEMM's phases (CpuBlendStats)
#pragma omp parallel reduction(+ : visited, contributing, list_lanes, gather_s, gemm_s)
  {
    // Tile state, structure of arrays over the 16 x 16 pixels in chunk order; features channel-major
    // (lane_feat), otherwise each chunk's list of weights.
    Scratch s_T(kTilePixels), s_rgb(3 * kTilePixels), s_dep(kTilePixels), s_last(kTilePixels),
        s_done(kTilePixels), s_feat(lane_feat ? C * kTilePixels : 0);
    float *T = s_T.p, *acc_rgb = s_rgb.p, *acc_dep = s_dep.p, *last = s_last.p, *done = s_done.p;
    float* acc_feat = s_feat.p;
    ChunkLists lists;
    const ChannelBlocks blocks(C);
    Buffer<float> packed;        // a channel block of the tile's features (pack_feature_block)
    Buffer<unsigned char> used;  // list positions that blended a pixel
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < n_tiles; ++t) {
      const Tile tile(in, t);
      int active = 0;
      for (int p = 0; p < kTilePixels; ++p) {
        const bool inside = state_row(p) < tile.h && state_col(p) < tile.w;
        T[p] = 1.f;
        acc_rgb[p] = acc_rgb[kTilePixels + p] = acc_rgb[2 * kTilePixels + p] = 0.f;
        acc_dep[p] = 0.f;
        last[p] = 0.f;
        done[p] = inside ? 0.f : 1.f;
        active += inside;
      }
      if (lane_feat && C > 0) memset(acc_feat, 0, sizeof(float) * C * kTilePixels);
      const int start = in.tile_offsets[t], end = in.tile_offsets[t + 1];
      if (!lane_feat) {
        lists.clear();
        used.assign(end - start, 0);
      }
      const uint64_t all = tile_chunks(tile);
      for (int i = start; i < end && active > 0; ++i) {
        if (i + kPrefetch < end) {
          const int ahead = in.gaussian_ids[i + kPrefetch];
          __builtin_prefetch(in.packed + ahead);
          if (lane_feat && C > 0) __builtin_prefetch(in.features + (int64_t)ahead * C);
        }
        const int g = in.gaussian_ids[i];
        const PackedGaussian& P = in.packed[g];
        const float mx = P.mx, my = P.my;
        const CullSplat cs = unpack_cull(P);
        uint64_t chunks = live_chunks(tile, all, cs, cull);
        if (!chunks) continue;
        const V ca(P.ca), cb(P.cb), cc(P.cc), vo(P.opacity);
        const V cr(P.r), cg(P.g), cbl(P.b), vdep(P.depth);
        const V pos((float)(i - start + 1));
        const float* fg = C > 0 ? in.features + (int64_t)g * C : nullptr;
        while (chunks) {
          const int idx = __builtin_ctzll(chunks);
          chunks &= chunks - 1;
          const int p0 = idx * L;
          const V done_v = V::loadu(done + p0);
          const V live = done_v == V(0.f);
          const unsigned live_bits = lanes(live);
          if (!live_bits) continue;
          if (count) visited += popcount(live_bits);
          const ChunkSplat s = eval_chunk(tile, idx, mx, my, ca, cb, cc, vo);
          const V ok = live & s.ok;
          if (!lanes(ok)) continue;
          const V Tv = V::loadu(T + p0);
          const V next_T = Tv * (V(1.f) - s.alpha);
          const V stop = ok & (next_T < V(kTransmittanceMin));
          const unsigned stop_bits = lanes(stop);
          if (stop_bits) {
            select(stop, V(1.f), done_v).store(done + p0);
            active -= popcount(stop_bits);
          }
          const V blend = ok & (next_T >= V(kTransmittanceMin));
          const unsigned blend_bits = lanes(blend);
          if (!blend_bits) continue;
          if (count) contributing += popcount(blend_bits);
          const V w = s.alpha * Tv;
          float* ar = acc_rgb + p0;
          const V r0 = V::loadu(ar), r1 = V::loadu(ar + kTilePixels), r2 = V::loadu(ar + 2 * kTilePixels);
          select(blend, r0 + w * cr, r0).store(ar);
          select(blend, r1 + w * cg, r1).store(ar + kTilePixels);
          select(blend, r2 + w * cbl, r2).store(ar + 2 * kTilePixels);
          const V d0 = V::loadu(acc_dep + p0);
          select(blend, d0 + w * vdep, d0).store(acc_dep + p0);
          select(blend, next_T, Tv).store(T + p0);
          select(blend, pos, V::loadu(last + p0)).store(last + p0);
          if (lane_feat) {
            for (int64_t c = 0; c < C; ++c) {
              float* af = acc_feat + c * kTilePixels + p0;
              const V a = V::loadu(af);
              select(blend, a + w * V(fg[c]), a).store(af);
            }
          } else if (C > 0) {
            select(blend, w, V(0.f)).store(lists.add(idx, i - start));
            used[i - start] = 1;
          }
        }
      }
      // The feature blend of the tile's chunks, straight into (C, H, W).
      if (!lane_feat && C > 0) {
        int n = end - start;
        while (n > 0 && !used[n - 1]) --n;
        if (packed.size() < (size_t)n * kChannelBlock) packed.resize((size_t)n * kChannelBlock);
        double seconds[2] = {0., 0.};
        blend_tile_features(lists, tile, in.width, in.gaussian_ids + start, used.data(), n, in.features, C, blocks,
                            packed.data(), args->out_feat, HW, count ? seconds : nullptr);
        if (count) {
          gather_s += seconds[0];
          gemm_s += seconds[1];
          for (int j = 0; j < kTileLists; ++j) list_lanes += (int64_t)lists.size(j) * kListLanes;
        }
      }
      for (int r = 0; r < tile.h; ++r) {
        for (int col = 0; col < tile.w; ++col) {
          const int p = state_index(r, col);
          const int64_t pix = (int64_t)(tile.y0 + r) * in.width + tile.x0 + col;
          for (int c = 0; c < 3; ++c) args->out_rgb[c * HW + pix] = acc_rgb[c * kTilePixels + p];
          if (lane_feat)
            for (int64_t c = 0; c < C; ++c) args->out_feat[c * HW + pix] = acc_feat[c * kTilePixels + p];
          args->out_depth[pix] = acc_dep[p];
          args->out_alpha[pix] = 1.f - T[p];
          args->out_T[pix] = T[p];
          args->out_last[pix] = (int)last[p];
        }
      }
    }
    store_fence();  // the streaming stores of blend_tile_features, before the barrier
  }
  if (count) {
    args->stats->visited += visited;
    args->stats->contributing += contributing;
    args->stats->feature_gather_s += gather_s;
    args->stats->feature_gemm_s += gemm_s;
    args->stats->feature_list_lanes += list_lanes;
  }
}

// dst[j * ld_dst + i] = src[i * ld_src + j] for i < M, j < N (ATen's SIMD transposes).
inline void transpose(const float* src, int64_t ld_src, float* dst, int64_t ld_dst, int64_t M, int N) {
#if defined(CPU_CAPABILITY_AVX512)
  for (int64_t i = 0; i < M; i += 16)
    at::vec::transpose_mxn<float>(src + i * ld_src, ld_src, dst + i, ld_dst, M - i < 16 ? (int)(M - i) : 16, N);
#else
  int64_t i = 0;
#if defined(CPU_CAPABILITY_AVX2)
  for (; i + 8 <= M; i += 8)
    for (int j = 0; j + 8 <= N; j += 8)
      at::vec::transpose_mxn<float, 8, 8>(src + i * ld_src + j, ld_src, dst + j * ld_dst + i, ld_dst);
  const int j0 = N / 8 * 8;  // the columns left of full 8 x 8 blocks in those rows
  for (int64_t a = 0; a < i; ++a)
    for (int j = j0; j < N; ++j) dst[j * ld_dst + a] = src[a * ld_src + j];
#endif
  for (; i < M; ++i)
    for (int j = 0; j < N; ++j) dst[j * ld_dst + i] = src[i * ld_src + j];
#endif
}

// The tile's dL/dfeatures, read once from (C, H, W) into Gc (C x kTilePixels, channel
// c's pixel (r, col) at Gc + c kTilePixels + state_index(r, col); 0 outside the image). A
// tile row of a channel is one 64-byte line, and the lines of one tile are H W floats
// (channels) and W floats (rows) apart, strides that no hardware prefetcher follows:
// the lines of channel c + kGradPrefetch are prefetched while channel c is copied. The
// list blocks' channel-major dL/dout and the pixel-major one are then taken from Gc,
// in cache (reading (C, H, W) twice, once per layout, cost the backward's feature
// stage about a fifth of its time at C = 64 and 256).
//
// With AVX-512 a whole tile's two rows r, r + 1 become its two chunks of that chunk row
// by two full-line loads, two 128-bit-lane shuffles and two full stores. The general path
// below takes the 8-column halves with masked loads and stores, which are slow on Zen 4:
// there the whole-tile path took the backward's feature stage from 56.0 to 51.9 ms per
// thread at C = 64 and from 223 to 208 at C = 256 (6 alternating rounds).
constexpr int kGradPrefetch = 4;
inline void load_tile_grads(const float* dl_feat, int64_t C, int64_t HW, int width, const Tile& tile, float* Gc) {
  const float* base = dl_feat + (int64_t)tile.y0 * width + tile.x0;
#if defined(CPU_CAPABILITY_AVX512)
  static_assert(kChunkRows == 2 && kChunkCols == 8 && kChunksPerRow == 2, "AVX-512 chunks: 2 x 8 pixels");
  const bool whole = tile.w == kTileSize && tile.h == kTileSize;
#endif
  for (int64_t c = 0; c < C; ++c) {
    if (c + kGradPrefetch < C)
      for (int r = 0; r < tile.h; ++r) __builtin_prefetch(base + (c + kGradPrefetch) * HW + (int64_t)r * width);
    float* dst = Gc + c * kTilePixels;
    const float* src = base + c * HW;
#if defined(CPU_CAPABILITY_AVX512)
    if (whole) {
      for (int r = 0; r < kTileSize; r += kChunkRows) {
        const __m512 a = _mm512_loadu_ps(src + (int64_t)r * width), b = _mm512_loadu_ps(src + (int64_t)(r + 1) * width);
        float* chunk = dst + state_index(r, 0);
        _mm512_storeu_ps(chunk, _mm512_shuffle_f32x4(a, b, 0x44));      // columns 0-7 of rows r, r + 1
        _mm512_storeu_ps(chunk + L, _mm512_shuffle_f32x4(a, b, 0xEE));  // columns 8-15
      }
      continue;
    }
#endif
    for (int r = 0; r < kTileSize; ++r)
#pragma GCC unroll 2
      for (int q = 0; q < kChunksPerRow; ++q) {
        const int col0 = q * kChunkCols, count = tile.w - col0 < kChunkCols ? tile.w - col0 : kChunkCols;
        V v(0.f);
        if (r < tile.h && count > 0) v = count == L ? V::loadu(src + (int64_t)r * width + col0)
                                                    : V::loadu(src + (int64_t)r * width + col0, count);
        if (kChunkCols == L)
          v.store(dst + state_index(r, col0));
        else
          v.store(dst + state_index(r, col0), kChunkCols);
      }
  }
}

// Backward, D: out[e][lanes] = sum_c rows[e][c] Gt[c][lanes] for NE entries, Gt the
// list block's dL/dout channel-major (C x kListLanes, contiguous).
template <int NE>
inline void feature_dots(const float* const* rows, const float* Gt, int64_t C, float* const* out) {
  V acc[NE][kListRows];
  zero_block(acc);
  for (int64_t c = 0; c < C; ++c)
    outer_product_step(acc, Gt + c * kListLanes, [rows, c](int e) { return rows[e][c]; });
#pragma GCC unroll 16
  for (int e = 0; e < NE; ++e)
#pragma GCC unroll 2
    for (int v = 0; v < kListRows; ++v) acc[e][v].store(out[e] + v * L);
}

// Backward, dL/dF: for NE entries with weights W[e] (kListLanes lanes), adds (or,
// where first[e], writes) sum_l W[e][l] Gp[l][c] to out[e][c] for the NV vectors of
// channels from c0 (the last one holding `tail` channels), Gp the list block's
// dL/dout in the tile's pixel-major layout (lane l: state index (l / L) kChunkRowStride
// + l % L from the block's first, at Gp + that C). Only the lanes of `lanes_used` are visited.
template <int NE, int NV>
inline void feature_grads(const float* const* W, unsigned lanes_used, const float* Gp, int64_t C, int64_t c0,
                          int tail, float* const* out, const bool* first) {
  V acc[NE][NV];
#pragma GCC unroll 16
  for (int e = 0; e < NE; ++e)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[e][v] = V(0.f);
  const float* G0 = Gp + c0;
  for (unsigned b = lanes_used; b; b &= b - 1) {
    const unsigned l = (unsigned)lowest(b);
    // Lane l's pixel: with one chunk per block (kListRows 1) the block's l-th.
    const unsigned pix = kListRows == 1 ? l : (l / L) * kChunkRowStride + l % L;
    const float* g = G0 + (int64_t)pix * C;
    V gv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) gv[v] = (v == NV - 1 && tail < L) ? V::loadu(g + v * L, tail) : V::loadu(g + v * L);
#pragma GCC unroll 16
    for (int e = 0; e < NE; ++e) {
      const V wv(W[e][l]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[e][v] = at::vec::fmadd(wv, gv[v], acc[e][v]);
    }
  }
#pragma GCC unroll 16
  for (int e = 0; e < NE; ++e)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* dst = out[e] + c0 + v * L;
      const int n = v == NV - 1 ? tail : L;
      const V sum = first[e] ? acc[e][v] : (n == L ? V::loadu(dst) : V::loadu(dst, n)) + acc[e][v];
      if (n == L)
        sum.store(dst);
      else
        sum.store(dst, n);
    }
}

// Per tile and thread, the backward's deferred per-Gaussian results: the partial
// gradients of each list position k (geometry, and dL/dF at feat_row(k)), emitted once
// all chunks are done. In deterministic mode feat_row(k) is the row of k's Gaussian in
// the sink's pair buffer (PairRows), so dL/dF is written or added where it is summed; in
// atomic mode it is row k of the tile's own rows (own_feat).
struct TileGrads {
  Buffer<float> geom, own_feat;
  Buffer<unsigned char> touched, seen, fresh;
  Buffer<int64_t> row;      // deterministic mode: the sink row of each touched position
  Buffer<uint64_t> chunks;  // the chunks of each position that the culling keeps
  float* feat = nullptr;    // own_feat, or the sink's pair_feat
  bool in_sink = false;
  int64_t C = 0;
  void reset(int n, int64_t channels, const CpuGradSink& sink) {
    C = channels;
    if ((int)chunks.size() < n) chunks.resize(n);
    if ((int64_t)geom.size() < (int64_t)n * kPairGeomValues) geom.resize((size_t)n * kPairGeomValues);
    in_sink = !sink.atomic;
    if (in_sink) {
      if ((int)row.size() < n) row.resize(n);
      feat = sink.pair_feat;
    } else {
      if ((int64_t)own_feat.size() < (int64_t)n * C) own_feat.resize((size_t)n * C);
      feat = own_feat.data();
    }
    touched.assign(n, 0);
    seen.assign(n, 0);
    fresh.assign(n, 0);
  }
  float* feat_row(int k) const { return feat + (in_sink ? row[k] : (int64_t)k) * C; }
};

// Runs f(std::integral_constant<int, B>) for blocks B from {Max, 8, 4, 2, 1} (B <= Max) that
// cover n items, largest first; f advances its own position.
template <int Max, typename F>
inline void for_blocks(int n, F&& f) {
  int left = n;
  while (left >= Max) { f(std::integral_constant<int, Max>{}); left -= Max; }
  if constexpr (Max > 8) if (left >= 8) { f(std::integral_constant<int, 8>{}); left -= 8; }
  if constexpr (Max > 4) if (left >= 4) { f(std::integral_constant<int, 4>{}); left -= 4; }
  if constexpr (Max > 2) if (left >= 2) { f(std::integral_constant<int, 2>{}); left -= 2; }
  if (left >= 1) f(std::integral_constant<int, 1>{});
}

// D for every entry of list block j (entries hold list positions k; gid maps k to
// the Gaussian), from Gt (C x kListLanes).
inline void chunk_feature_dots(ChunkLists& lists, int j, const int* gid, const float* F, int64_t C,
                               const float* Gt) {
  const int n = lists.size(j);
  lists.reserve_dots(j);
  int e0 = 0;
  for_blocks<kEntryBlock>(n, [&](auto nb) {
    constexpr int NE = decltype(nb)::value;
    const float* rows[NE];
    float* out[NE];
    for (int e = 0; e < NE; ++e) {
      rows[e] = F + (int64_t)gid[lists.ids(j)[e0 + e]] * C;
      out[e] = lists.dots(j) + (int64_t)(e0 + e) * kListLanes;
    }
    // The next block's rows, line by line (at C = 64, 512 x 512: the dot products 8% faster).
    for (int e = e0 + NE; e < e0 + 2 * NE && e < n; ++e) {
      const char* row = (const char*)(F + (int64_t)gid[lists.ids(j)[e]] * C);
      for (int64_t b = 0; b < C * (int64_t)sizeof(float); b += 64) __builtin_prefetch(row + b);
    }
    feature_dots<NE>(rows, Gt, C, out);
    e0 += NE;
  });
}

// dL/dF of every entry of list block j into grads.feat (row k), from Gp (the block's
// first pixel in the tile's pixel-major dL/dout).
inline void chunk_feature_grads(const ChunkLists& lists, int j, const float* Gp, int64_t C, TileGrads& grads) {
  const int n = lists.size(j);
  int e0 = 0;
  for_blocks<kGradBlock>(n, [&](auto nb) {
    constexpr int NE = decltype(nb)::value;
    const float* W[NE];
    float* out[NE];
    bool first[NE];
    unsigned used = 0;
    for (int e = 0; e < NE; ++e) {
      const int k = lists.ids(j)[e0 + e];
      W[e] = lists.weights(j) + (int64_t)(e0 + e) * kListLanes;
      out[e] = grads.feat_row(k);
      first[e] = !grads.seen[k];
      used |= lists.masks(j)[e0 + e];
    }
    int64_t c0 = 0;
    constexpr int64_t kStep = (int64_t)kGradVectors * L;
    for (; c0 + kStep <= C; c0 += kStep) feature_grads<NE, kGradVectors>(W, used, Gp, C, c0, L, out, first);
    // The rest: fewer than kGradVectors vectors, the last one `tail` channels wide.
    const int64_t rest = C - c0;
    const int tail = (int)(rest - (rest - 1) / L * L);
    static_assert(kGradVectors == 3 || kGradVectors == 4, "the rest below is 1 to 4 vectors");
    if (rest > 3 * L) {
      if constexpr (kGradVectors == 4) feature_grads<NE, 4>(W, used, Gp, C, c0, tail, out, first);
    } else if (rest > 2 * L)
      feature_grads<NE, 3>(W, used, Gp, C, c0, tail, out, first);
    else if (rest > L)
      feature_grads<NE, 2>(W, used, Gp, C, c0, tail, out, first);
    else if (rest > 0)
      feature_grads<NE, 1>(W, used, Gp, C, c0, tail, out, first);
    for (int e = 0; e < NE; ++e) grads.seen[lists.ids(j)[e0 + e]] = 1;
    e0 += NE;
  });
}

void backward(const CpuBackwardArgs* args) {
  const CpuRasterInputs& in = args->in;
  const int64_t C = in.C;
  const int64_t HW = (int64_t)in.width * in.height;
  const bool cull = in.cull != 0;
  const bool lane_feat = C < L;  // as in forward(): channel-major, across pixels
  const bool gemm = !lane_feat && C > 0;  // the feature terms as matrix products (see ChunkLists)
#pragma omp parallel
  {
    // Per pixel (structure of arrays): T recovered back to front, Q = the sum over
    // the Gaussians behind of w_j (dL/dout . v_j), last contributor, output
    // gradients; dL/dfeatures channel-major (lane_feat) or pixel-major (gemm).
    Scratch s_T(kTilePixels), s_Q(kTilePixels), s_last(kTilePixels), s_grgb(3 * kTilePixels),
        s_gdep(kTilePixels), s_galpha(kTilePixels), s_gfeat(C * kTilePixels), s_accf(C),
        s_accl(lane_feat ? C * L : 0), s_gt(gemm ? C * kListLanes : 0), s_gc(gemm ? C * kTilePixels : 0);
    float *T = s_T.p, *Q = s_Q.p, *last = s_last.p, *g_rgb = s_grgb.p, *g_dep = s_gdep.p;
    float *g_alpha = s_galpha.p, *g_feat = s_gfeat.p, *acc_f = s_accf.p;
    float* acc_lanes = s_accl.p;  // lane_feat: per channel, the lane partial sums of dL/df
    float* Gt = s_gt.p;           // gemm: one list block's dL/dfeatures, channel-major (C x kListLanes)
    float* Gc = s_gc.p;           // gemm: the tile's dL/dfeatures, channel-major (C x kTilePixels)
    ChunkLists lists;
    TileGrads grads;
    PairRows rows;
#pragma omp for schedule(dynamic, 1)
    for (int q = 0; q < args->groups; ++q) {
      const TileRange tiles = start_fold_group(*args, q, rows);
      for (int t = tiles.begin; t < tiles.end; ++t) {
        const Tile tile(in, t);
        for (int p = 0; p < kTilePixels; ++p) {
          T[p] = 1.f;
          Q[p] = 0.f;
          last[p] = 0.f;
          g_rgb[p] = g_rgb[kTilePixels + p] = g_rgb[2 * kTilePixels + p] = 0.f;
          g_dep[p] = g_alpha[p] = 0.f;
        }
        // gemm reads only the lanes of blended pixels, which the transpose below fills.
        if (lane_feat && C > 0) memset(g_feat, 0, sizeof(float) * C * kTilePixels);
        for (int r = 0; r < tile.h; ++r) {
          for (int col = 0; col < tile.w; ++col) {
            const int p = state_index(r, col);
            const int64_t pix = (int64_t)(tile.y0 + r) * in.width + tile.x0 + col;
            T[p] = args->final_T[pix];
            const int lc = args->last_contrib[pix];
            last[p] = (float)lc;
            for (int c = 0; c < 3; ++c) g_rgb[c * kTilePixels + p] = args->dl_rgb[c * HW + pix];
            g_dep[p] = args->dl_depth[pix];
            g_alpha[p] = args->dl_alpha[pix];
            if (lane_feat)
              for (int64_t c = 0; c < C; ++c) g_feat[c * kTilePixels + p] = args->dl_feat[c * HW + pix];
          }
        }
        // dL/dfeatures (C, H, W): the tile's channel-major copy, and from it pixel-major (both
        // in state order), 16 pixels at a time, the chunk rows inside the image.
        if (gemm) {
          load_tile_grads(args->dl_feat, C, HW, in.width, tile, Gc);
          const int inside = (tile.h + kChunkRows - 1) / kChunkRows * kChunkRowStride;
          for (int p = 0; p < inside; p += 16) transpose(Gc + p, kTilePixels, g_feat + (int64_t)p * C, C, C, 16);
        }
        const int start = in.tile_offsets[t];
        const int* gid = in.gaussian_ids + start;  // list position k -> Gaussian
        const uint64_t all = tile_chunks(tile);
        int tile_last = 0;
        for (int p = 0; p < kTilePixels; ++p) tile_last = last[p] > tile_last ? (int)last[p] : tile_last;
        if (gemm) {
          // The (chunk, k) pairs that blend a pixel, in the loop's order, with their
          // Gaussian values G (the loop below reads them instead of evaluating the exp
          // again; which lanes blend does not depend on the loop's state), then their
          // D = dL/dout . f, chunk by chunk.
          lists.clear();
          grads.reset(tile_last, C, args->sink);
          for (int k = tile_last - 1; k >= 0; --k) {
            if (k >= kPrefetch) __builtin_prefetch(in.packed + gid[k - kPrefetch]);
            const PackedGaussian& P = in.packed[gid[k]];
            const CullSplat cs = unpack_cull(P);
            const V ca(P.ca), cb(P.cb), cc(P.cc), vo(P.opacity), vk((float)k);
            uint64_t kept = 0;
            for (uint64_t chunks = live_chunks(tile, all, cs, cull); chunks; chunks &= chunks - 1) {
              const int idx = __builtin_ctzll(chunks);
              const V behind = V::loadu(last + idx * L) > vk;
              if (!lanes(behind)) continue;
              const ChunkSplat sp = eval_chunk(tile, idx, P.mx, P.my, ca, cb, cc, vo);
              const V ok = behind & sp.ok;
              const unsigned ok_bits = lanes(ok);
              if (!ok_bits) continue;
              lists.add_backward(idx, k, select(ok, sp.G, V(0.f)), ok_bits);
              kept |= (uint64_t)1 << idx;
            }
            grads.chunks[k] = kept;
          }
          for (int j = 0; j < kTileLists; ++j) {
            if (!lists.size(j)) continue;
            const int p0 = block_state(j);
            for (int64_t c = 0; c < C; ++c)
#pragma GCC unroll 2
              for (int v = 0; v < kListRows; ++v)
                V::loadu(Gc + c * kTilePixels + p0 + v * kChunkRowStride).store(Gt + c * kListLanes + v * L);
            chunk_feature_dots(lists, j, gid, in.features, C, Gt);
          }
        }
        for (int k = tile_last - 1; k >= 0; --k) {
          if (k >= kPrefetch) {
            const int ahead = gid[k - kPrefetch];
            __builtin_prefetch(in.packed + ahead);
            if (lane_feat && C > 0) __builtin_prefetch(in.features + (int64_t)ahead * C);
          }
          const int g = gid[k];
          const PackedGaussian& P = in.packed[g];
          const float mx = P.mx, my = P.my;
          const CullSplat cs = unpack_cull(P);
          uint64_t chunks = gemm ? grads.chunks[k] : live_chunks(tile, all, cs, cull);
          if (!chunks) continue;
          const V ca(P.ca), cb(P.cb), cc(P.cc), vo(P.opacity), vk((float)k);
          const V cr(P.r), cg(P.g), cbl(P.b), vdep(P.depth);
          const float* fg = C > 0 ? in.features + (int64_t)g * C : nullptr;
          // Lane partial sums, in the order of kernels_api.h's kPairGeomValues.
          V a_mx(0.f), a_my(0.f), a_ca(0.f), a_cb(0.f), a_cc(0.f), a_op(0.f), a_r(0.f), a_g(0.f),
              a_b(0.f), a_dep(0.f);
          bool touched = false;
          const V zero(0.f);
          while (chunks) {
            const int idx = __builtin_ctzll(chunks);
            chunks &= chunks - 1;
            const int p0 = idx * L;
            ChunkSplat s;
            V ok;
            float* w_slot = nullptr;
            int lj = 0;  // gemm: the list block of the chunk
            if (gemm) {  // a blending pair (first pass): its G, in the slot of its weights
              lj = list_of(idx);
              w_slot = lists.weights(lj) + (int64_t)lists.find(lj, k) * kListLanes + vector_of(idx) * L;
              s = chunk_from_G(tile, idx, mx, my, vo, V::loadu(w_slot));
              ok = s.ok;
            } else {
              const V behind = V::loadu(last + p0) > vk;  // this Gaussian is before the pixel's last
              if (!lanes(behind)) continue;
              s = eval_chunk(tile, idx, mx, my, ca, cb, cc, vo);
              ok = behind & s.ok;
              if (!lanes(ok)) continue;
            }
            if (!touched) {
              touched = true;
              if (lane_feat) memset(acc_lanes, 0, sizeof(float) * C * L);
            }
            const V one_minus = V(1.f) - s.alpha;
            const V Tv = V::loadu(T + p0);
            const V Tf = Tv / one_minus;  // transmittance in front of this Gaussian
            select(ok, Tf, Tv).store(T + p0);
            const V w = s.alpha * Tf;
            const V gr = V::loadu(g_rgb + p0), gg = V::loadu(g_rgb + kTilePixels + p0),
                    gb = V::loadu(g_rgb + 2 * kTilePixels + p0);
            const V gd = V::loadu(g_dep + p0);
            V gv = (((zero + gr * cr) + gg * cg) + gb * cbl) + gd * vdep + V::loadu(g_alpha + p0);
            if (lane_feat) {
              V d = zero;
              for (int64_t c = 0; c < C; ++c) {
                const V gc = V::loadu(g_feat + c * kTilePixels + p0);
                d = d + gc * V(fg[c]);
                float* al = acc_lanes + c * L;
                (V::loadu(al) + select(ok, w * gc, zero)).store(al);
              }
              gv = gv + d;
            } else if (gemm) {
              gv = gv + V::loadu(lists.dots(lj) + (w_slot - lists.weights(lj)));
              select(ok, w, zero).store(w_slot);
            }
            a_r = a_r + select(ok, w * gr, zero);
            a_g = a_g + select(ok, w * gg, zero);
            a_b = a_b + select(ok, w * gb, zero);
            a_dep = a_dep + select(ok, w * gd, zero);
            const V Qv = V::loadu(Q + p0);
            const V d_alpha = Tf * gv - Qv / one_minus;
            select(ok, Qv + w * gv, Qv).store(Q + p0);
            // f3d::eval_splat_backward, for the lanes whose alpha was not clamped.
            const V grad = ok & (s.alpha_raw <= V(kAlphaMax));
            const V d_power = d_alpha * vo * s.G;
            a_op = a_op + select(grad, d_alpha * s.G, zero);
            a_ca = a_ca + select(grad, V(-0.5f) * s.dx * s.dx * d_power, zero);
            a_cb = a_cb + select(grad, s.dx.neg() * s.dy * d_power, zero);
            a_cc = a_cc + select(grad, V(-0.5f) * s.dy * s.dy * d_power, zero);
            a_mx = a_mx + select(grad, d_power * (ca * s.dx + cb * s.dy), zero);
            a_my = a_my + select(grad, d_power * (cb * s.dx + cc * s.dy), zero);
          }
          if (!touched) continue;
          if (lane_feat)
            for (int64_t c = 0; c < C; ++c) acc_f[c] = lane_sum(V::loadu(acc_lanes + c * L));
          const float geom[kPairGeomValues] = {lane_sum(a_mx), lane_sum(a_my), lane_sum(a_ca),
                                               lane_sum(a_cb), lane_sum(a_cc), lane_sum(a_op),
                                               lane_sum(a_r),  lane_sum(a_g),  lane_sum(a_b),
                                               lane_sum(a_dep)};
          if (gemm) {  // emitted once dL/dF is known, below
            memcpy(grads.geom.data() + (int64_t)k * kPairGeomValues, geom, sizeof(geom));
            grads.touched[k] = 1;
          } else {
            emit_pair_grad(args->sink, rows, g, geom, acc_f, C);
          }
        }
        if (gemm) {
          if (grads.in_sink)  // each touched position's row: dL/dF is stored into a fresh one, else added
            for (int k = tile_last - 1; k >= 0; --k)
              if (grads.touched[k]) {
                bool fresh;
                grads.row[k] = rows.row(gid[k], fresh);
                grads.fresh[k] = fresh;
                grads.seen[k] = !fresh;
              }
          for (int j = 0; j < kTileLists; ++j) {
            if (!lists.size(j)) continue;
            chunk_feature_grads(lists, j, g_feat + (int64_t)block_state(j) * C, C, grads);
          }
          for (int k = tile_last - 1; k >= 0; --k) {
            if (!grads.touched[k]) continue;
            const float* geom = grads.geom.data() + (int64_t)k * kPairGeomValues;
            if (grads.in_sink)
              emit_pair_geom(args->sink, grads.row[k], grads.fresh[k], gid[k], geom);
            else
              emit_pair_grad(args->sink, rows, gid[k], geom, grads.feat_row(k), C);
          }
        }
      }
    }
  }
}

// Volatile, so that the compiler can neither fold the chains nor drop them.
volatile float g_probe_seed[3] = {1e-3f, 0.9999999f, 1e-7f};
volatile float g_probe_sink;

// Independent chains of V fused multiply-adds (at::vec::fmadd: one FMA instruction
// where the ISA has it), enough to cover the FMA latency on every pipe.
double fma_gflops(double seconds) {
  return measure_gflops(seconds, [] {
    constexpr int kChains = L == 16 ? 16 : 10, kSteps = 1 << 14;
    V a[kChains];
    for (int j = 0; j < kChains; ++j) a[j] = V(g_probe_seed[0] * (float)j);
    const V b(g_probe_seed[1]), c(g_probe_seed[2]);
    for (int i = 0; i < kSteps; ++i) {
#pragma GCC unroll 16
      for (int j = 0; j < kChains; ++j) a[j] = at::vec::fmadd(a[j], b, c);
    }
    V sum = a[0];
    for (int j = 1; j < kChains; ++j) sum = sum + a[j];
    g_probe_sink = lane_sum(sum);
    return 2.0 * kChains * L * kSteps;
  });
}

}  // namespace

CpuKernels simd_kernels() { return {kCpuKernelsAbi, F3D_SIMD_ISA, L, &forward, &backward, &fma_gflops}; }

}  // namespace F3D_SIMD_NS
}  // namespace f3d
