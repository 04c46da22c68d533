// Emulator shim of the cub device-wide algorithms the kernels use, run on the
// host: DeviceScan::InclusiveSum / ExclusiveSum and a stable LSD
// DeviceRadixSort::SortPairs / SortKeys that compares only the key bits
// [begin_bit, end_bit), as cub does. The two-call protocol is kept: a call with
// d_temp_storage == nullptr only sets temp_storage_bytes (never 0), and a call
// with less temporary storage than that fails.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

namespace cub {

namespace emu_detail {
constexpr size_t kTempBytes = 64;

inline cudaError_t check_temp(void* temp, size_t& bytes, bool& query) {
  query = temp == nullptr;
  if (query) {
    bytes = kTempBytes;
    return cudaSuccess;
  }
  return bytes >= kTempBytes ? cudaSuccess : cudaErrorInvalidValue;
}

// Stable LSD radix sort of the permutation by the key bits [begin_bit, end_bit).
template <typename K>
std::vector<int64_t> radix_order(const K* keys, int64_t n, int begin_bit, int end_bit) {
  static_assert(std::is_integral<K>::value && std::is_unsigned<K>::value,
                "emulated SortPairs supports unsigned integer keys");
  std::vector<int64_t> order(n), next(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  for (int shift = begin_bit; shift < end_bit; shift += 8) {
    const int bits = end_bit - shift < 8 ? end_bit - shift : 8;
    const uint64_t digit_mask = (uint64_t(1) << bits) - 1;
    int64_t count[257] = {0};
    for (int64_t i = 0; i < n; ++i) ++count[((uint64_t)keys[order[i]] >> shift & digit_mask) + 1];
    for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
    for (int64_t i = 0; i < n; ++i) next[count[(uint64_t)keys[order[i]] >> shift & digit_mask]++] = order[i];
    order.swap(next);
  }
  return order;
}
}  // namespace emu_detail

struct DeviceScan {
  template <typename InIt, typename OutIt, typename NumT>
  static cudaError_t InclusiveSum(void* d_temp_storage, size_t& temp_storage_bytes, InIt d_in, OutIt d_out,
                                  NumT num_items, cudaStream_t = nullptr) {
    bool query;
    const cudaError_t e = emu_detail::check_temp(d_temp_storage, temp_storage_bytes, query);
    if (query || e != cudaSuccess) return e;
    if (num_items <= 0) return cudaSuccess;
    auto acc = d_in[0];
    d_out[0] = acc;
    for (int64_t i = 1; i < (int64_t)num_items; ++i) {
      acc = acc + d_in[i];
      d_out[i] = acc;
    }
    return cudaSuccess;
  }

  template <typename InIt, typename OutIt, typename NumT>
  static cudaError_t ExclusiveSum(void* d_temp_storage, size_t& temp_storage_bytes, InIt d_in, OutIt d_out,
                                  NumT num_items, cudaStream_t = nullptr) {
    bool query;
    const cudaError_t e = emu_detail::check_temp(d_temp_storage, temp_storage_bytes, query);
    if (query || e != cudaSuccess) return e;
    if (num_items <= 0) return cudaSuccess;
    auto acc = d_in[0] - d_in[0];
    for (int64_t i = 0; i < (int64_t)num_items; ++i) {
      const auto v = d_in[i];
      d_out[i] = acc;
      acc = acc + v;
    }
    return cudaSuccess;
  }
};

struct DeviceRadixSort {
  template <typename K, typename V, typename NumT>
  static cudaError_t SortPairs(void* d_temp_storage, size_t& temp_storage_bytes, const K* d_keys_in,
                               K* d_keys_out, const V* d_values_in, V* d_values_out, NumT num_items,
                               int begin_bit = 0, int end_bit = (int)sizeof(K) * 8, cudaStream_t = nullptr) {
    bool query;
    const cudaError_t e = emu_detail::check_temp(d_temp_storage, temp_storage_bytes, query);
    if (query || e != cudaSuccess) return e;
    if (begin_bit < 0 || end_bit > (int)sizeof(K) * 8 || begin_bit > end_bit) return cudaErrorInvalidValue;
    const int64_t n = (int64_t)num_items;
    const std::vector<int64_t> order = emu_detail::radix_order(d_keys_in, n, begin_bit, end_bit);
    std::vector<K> keys(n);
    std::vector<V> values(n);
    for (int64_t i = 0; i < n; ++i) {
      keys[i] = d_keys_in[order[i]];
      values[i] = d_values_in[order[i]];
    }
    if (n > 0) {
      std::memcpy(d_keys_out, keys.data(), n * sizeof(K));
      std::memcpy(d_values_out, values.data(), n * sizeof(V));
    }
    return cudaSuccess;
  }

  template <typename K, typename NumT>
  static cudaError_t SortKeys(void* d_temp_storage, size_t& temp_storage_bytes, const K* d_keys_in, K* d_keys_out,
                              NumT num_items, int begin_bit = 0, int end_bit = (int)sizeof(K) * 8,
                              cudaStream_t = nullptr) {
    bool query;
    const cudaError_t e = emu_detail::check_temp(d_temp_storage, temp_storage_bytes, query);
    if (query || e != cudaSuccess) return e;
    if (begin_bit < 0 || end_bit > (int)sizeof(K) * 8 || begin_bit > end_bit) return cudaErrorInvalidValue;
    const int64_t n = (int64_t)num_items;
    const std::vector<int64_t> order = emu_detail::radix_order(d_keys_in, n, begin_bit, end_bit);
    std::vector<K> keys(n);
    for (int64_t i = 0; i < n; ++i) keys[i] = d_keys_in[order[i]];
    if (n > 0) std::memcpy(d_keys_out, keys.data(), n * sizeof(K));
    return cudaSuccess;
  }
};

}  // namespace cub
