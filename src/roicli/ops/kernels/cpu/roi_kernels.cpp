// Fused CPU kernels of roicli's ops: roi_align (avg, max), roi_pool and precise_roi_pool, forward and
// backward. The contract is the kernel seam's (roicli/ops/kernels/__init__.py, notes in cpp.py):
// inputs are validated by the front door; `rois` is Tensor[K, 5] (batch, x1, y1, x2, y2) in the
// accumulation dtype (float32 for float32/float16/bfloat16 maps, float64 for float64 maps).
//
// Shape of the work (the same for every op):
//   * Geometry first, once per call and serially (it is small): for every RoI and axis, the taps of
//     each bin, computed in the rois' dtype in torchvision's order of operations. Built with
//     -ffp-contract=off, so no multiply-add is fused and sample positions agree to the last bit.
//   * Then ONE parallel region (at::parallel_for over the threads of torch.get_num_threads()); the
//     threads pull work items from an atomic counter, so a thread slowed by a busy core takes fewer.
//     A forward item is (image n, block of CB channels, chunk of that image's RoIs); a backward item
//     is (image n, block of CB channels) and owns grad_input[n, block] alone: no atomics, and every
//     sum runs in a fixed order whatever the number of threads (deterministic).
//   * An item reads its channel block through a channels-last buffer [rows, cols, CB] covering only
//     the pixels its RoIs touch, copied from any layout (NCHW through 8x8 register transposes). Each
//     tap is then one contiguous load of CB channels: the CB lanes are one GCC vector (explicit SIMD,
//     whatever -march gives); CB is 16 (an AVX-512 register of float32) or 8, see `lanes_for`.
//     Reading a channels-last input in place was tried: every tap is then its own far cache line,
//     3x slower than the copy. A backward item sums into such a buffer and transposes it into
//     grad_input once (roi_pool's float32/float64 backward sums straight into grad_input).
//   * The forward visits an image's RoIs by their last row, top to bottom (each RoI's output is its
//     own, so the order changes no bit), and copies its block a band of rows at a time just before
//     the RoIs that read them (BlockRows): what a RoI reads is in L2 even when the block (3.5 MB for
//     16 channels of a 200x272 map) is not. roi_align avg goes further (RowUnits): it visits a few
//     bin rows of a RoI at a time, by their last row, and keeps only a ring of the block's last rows,
//     so nothing of the block is ever written out of L2. The backward keeps the RoI order, which with
//     torchvision's per-sample arithmetic gives torchvision's gradients bit for bit.
//   * Big outputs have their pages made present (each thread its share) before they are written (populate);
//     a forward writes each RoI's block of results through register transposes, float32 outputs of
//     8 MiB and more in non-temporal stores (store_tile). Scratch buffers start on a cache line.
//   * roi_align avg follows torchvision's arithmetic exactly (w1..w4 products, ((w1 v1 + w2 v2) +
//     w3 v3) + w4 v4 per sample, / count; backward (g * w) / count): float32 and float64 results equal
//     torchvision's CPU kernels bit for bit. Half types are read into float32 and rounded once.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <type_traits>
#include <unordered_map>
#include <vector>

#ifdef __AVX512F__
#include <immintrin.h>
#endif

#ifdef __linux__
#include <sys/mman.h>
#endif

namespace {

// CB, the channels per block, is a template parameter of every kernel: 8 (one AVX2 register of float32
// lanes), or 16 (one AVX-512 register) where the machine has AVX-512 and a block's channels-last buffer
// of the whole map stays within kLaneBudget bytes (in L2: wider blocks of a big map are slower than
// narrow ones that stay in cache). See `lanes_for`.
constexpr int64_t kLaneBudget = int64_t(1) << 20;
constexpr int64_t kKeepScratch = int64_t(1) << 22;  // elements of scratch a thread keeps between calls

template <typename S>
using acc_t = std::conditional_t<std::is_same_v<S, double>, double, float>;

// CB lanes as one GCC vector (one register of float32, two of float64), and the lane masks.
template <typename T, int64_t N>
struct VecOf {
  typedef T type __attribute__((vector_size(N * sizeof(T))));
};
template <typename A>
using lane_int = std::conditional_t<std::is_same_v<A, double>, int64_t, int32_t>;  // a lane's index type
template <typename A, int64_t CB>
using Vec = typename VecOf<A, CB>::type;
template <typename A, int64_t CB>
using Mask = typename VecOf<lane_int<A>, CB>::type;  // what Vec<A, CB> compares give

template <typename V, typename A>
inline V vload(const A* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
template <typename V, typename A>
inline void vstore(A* p, const V& v) {
  std::memcpy(p, &v, sizeof v);
}

// In-register 8x8 transpose: r[c][i] -> r[i][c] (channel rows <-> pixel rows), three rounds of shuffles.
// 8 float32 lanes (the 8x8 transposes of the planar <-> channels-last copies, a CB block in CB / 8 halves).
typedef float v8f __attribute__((vector_size(8 * sizeof(float))));
typedef int32_t v8i __attribute__((vector_size(8 * sizeof(int32_t))));

inline void transpose8(v8f r[8]) {
  v8f t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = __builtin_shuffle(r[i], r[i + 1], v8i{0, 8, 1, 9, 4, 12, 5, 13});
    t[i + 1] = __builtin_shuffle(r[i], r[i + 1], v8i{2, 10, 3, 11, 6, 14, 7, 15});
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = __builtin_shuffle(t[i], t[i + 2], v8i{0, 1, 8, 9, 4, 5, 12, 13});
    u[i + 1] = __builtin_shuffle(t[i], t[i + 2], v8i{2, 3, 10, 11, 6, 7, 14, 15});
    u[i + 2] = __builtin_shuffle(t[i + 1], t[i + 3], v8i{0, 1, 8, 9, 4, 5, 12, 13});
    u[i + 3] = __builtin_shuffle(t[i + 1], t[i + 3], v8i{2, 3, 10, 11, 6, 7, 14, 15});
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = __builtin_shuffle(u[i], u[i + 4], v8i{0, 1, 2, 3, 8, 9, 10, 11});
    r[i + 4] = __builtin_shuffle(u[i], u[i + 4], v8i{4, 5, 6, 7, 12, 13, 14, 15});
  }
}

// An 8 x 8 block of float32 moved through one transpose8: dst[i * ds + j] = src[j * ss + i]. Every planar <->
// channels-last copy goes through it (8 pixels or bins x 8 channels at a time).
inline void transpose8_block(const float* src, int64_t ss, float* dst, int64_t ds) {
  v8f v[8];
  for (int j = 0; j < 8; ++j) v[j] = vload<v8f>(src + j * ss);
  transpose8(v);
  for (int i = 0; i < 8; ++i) vstore(dst + i * ds, v[i]);
}

// ------------------------------------------------------------------------------------------------
// outputs
// ------------------------------------------------------------------------------------------------
// A big output's pages are made present by system calls before it is written (Linux 5.14+,
// MADV_POPULATE_WRITE; elsewhere, or when it fails, the pages fault in as they are first written): a fresh
// 50 MB buffer otherwise takes 12,800 page faults, about 40% of the time spent filling it. Each thread of
// the call's parallel region populates its share first (see run_items): at two threads, that was
// 0.84x the time of faulting pages in as written on fastrcnn (200 MB out), 0.89x on maskrcnn-box.
// (Transparent huge pages, MADV_HUGEPAGE, were faster on an idle machine, but stalled calls 2-3x when
// the kernel had to compact memory for them: not robust.)
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
constexpr int64_t kPopulateBytes = int64_t(1) << 20;

// Share [t0, t1) of `of` of the pages of each output of kPopulateBytes or more, made present.
void populate(std::initializer_list<at::Tensor> outputs, int64_t t0, int64_t t1, int64_t of) {
#ifdef __linux__
  for (const at::Tensor& t : outputs) {
    if (int64_t(t.nbytes()) < kPopulateBytes) continue;
    const uintptr_t page = 4096;
    const uintptr_t begin = (reinterpret_cast<uintptr_t>(t.data_ptr()) + page - 1) & ~(page - 1);
    const uintptr_t end = (reinterpret_cast<uintptr_t>(t.data_ptr()) + t.nbytes()) & ~(page - 1);
    if (end <= begin) continue;
    const uintptr_t pages = (end - begin) / page, a = begin + pages * t0 / of * page, b = begin + pages * t1 / of * page;
    if (b > a) madvise(reinterpret_cast<void*>(a), b - a, MADV_POPULATE_WRITE);  // errors ignored
  }
#endif
}

// ------------------------------------------------------------------------------------------------
// work distribution and scratch
// ------------------------------------------------------------------------------------------------
// A call that moves fewer elements than this (output + input, about a millisecond of work) runs on
// the calling thread alone: on a busy machine, waking a second thread for it can cost more than the
// work (its core may be taken for a whole time slice, and the region ends only when it has run).
constexpr int64_t kSerialWork = int64_t(1) << 20;

// Runs f(i) for i in [0, n_items) in one parallel region, after populating the fresh outputs' pages.
template <typename F>
void run_items(int64_t n_items, int64_t work, const F& f, std::initializer_list<at::Tensor> fresh) {
  if (n_items <= 0) return;
  std::atomic<int64_t> next{0};
  const int64_t threads =
      work < kSerialWork ? 1 : std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_items));
  at::parallel_for(0, threads, 1, [&](int64_t t0, int64_t t1) {
    populate(fresh, t0, t1, threads);
    for (int64_t i = next.fetch_add(1); i < n_items; i = next.fetch_add(1)) f(i);
  });
}

// A per-thread buffer of at least n elements (kept across calls while small), aligned to a cache line:
// a block's CB lanes are then whole lines, never a load split over two (malloc gives 16-byte alignment;
// aligning gained 5-10% on every forward). Buffers in use at the same time need distinct `Tag`s: one
// (A, Tag) is one buffer per thread.
template <typename A, int Tag>
struct Scratch {
  std::vector<A> local;
  A* get(int64_t n) {
    thread_local std::vector<A> kept;
    const int64_t pad = 64 / int64_t(sizeof(A)) + 1;
    std::vector<A>& v = n <= kKeepScratch ? kept : local;
    if (int64_t(v.size()) < n + pad) v.resize(n + pad);
    return reinterpret_cast<A*>((reinterpret_cast<uintptr_t>(v.data()) + 63) & ~uintptr_t(63));
  }
};

struct Box {  // pixels [y0, y1) x [x0, x1)
  int64_t y0 = 0, y1 = 0, x0 = 0, x1 = 0;
  bool empty() const { return y1 <= y0 || x1 <= x0; }
  void add(const Box& o) {
    if (o.empty()) return;
    if (empty()) {
      *this = o;
      return;
    }
    y0 = std::min(y0, o.y0), y1 = std::max(y1, o.y1), x0 = std::min(x0, o.x0), x1 = std::max(x1, o.x1);
  }
};

// RoIs grouped by image, in their order: image n has order[start[n] .. start[n + 1]).
template <typename T>
struct ByImage {
  std::vector<int64_t> order, start, batch;
  ByImage(const T* rois, int64_t k, int64_t n) : order(k), start(n + 1, 0), batch(k) {
    for (int64_t i = 0; i < k; ++i) {
      batch[i] = std::min<int64_t>(std::max<int64_t>(int64_t(rois[i * 5]), 0), n - 1);
      ++start[batch[i] + 1];
    }
    for (int64_t i = 0; i < n; ++i) start[i + 1] += start[i];
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t i = 0; i < k; ++i) order[fill[batch[i]]++] = i;
  }
  // Forward only (each RoI's output is its own): visit an image's RoIs by their last row, top to
  // bottom, so that the channel block is copied a band of rows at a time just before the RoIs that
  // read it (see BlockRows), and consecutive RoIs read overlapping rows while they are in cache.
  void sort_by_rows(const std::vector<std::pair<int64_t, int64_t>>& span) {
    for (size_t i = 0; i + 1 < start.size(); ++i)
      std::stable_sort(order.begin() + start[i], order.begin() + start[i + 1],
                       [&](int64_t a, int64_t b) { return span[a].second < span[b].second; });
  }
};

// A view of one channel block: tap (y, x) of lane c is at ptr[(y - y0) * rs + (x - x0) * ps + c].
template <typename A>
struct View {
  const A* ptr;
  int64_t rs, ps, y0, x0;
  const A* at(int64_t y, int64_t x) const { return ptr + (y - y0) * rs + (x - x0) * ps; }
};

struct Planes {  // a [N, C, H, W] tensor's strides
  int64_t sn, sc, sh, sw;
  explicit Planes(const at::Tensor& t) : sn(t.stride(0)), sc(t.stride(1)), sh(t.stride(2)), sw(t.stride(3)) {}
};

// Rows [ya, yb) of channels [c0, c0 + cn) of image n over `box`, copied channels-last in the accumulation
// dtype into `buf` ([ring, cols, CB]: row y at (y - box.y0) % ring, lanes past cn zero).
template <int64_t CB, typename S, typename A>
void copy_rows(const S* in, const Planes& st, int64_t n, int64_t c0, int64_t cn, const Box& box, A* buf, int64_t ya,
               int64_t yb, int64_t ring) {
  // A channels-last input is copied too: read in place, each tap would be its own cache line far
  // away in memory (3x slower), while the copy reads it once, contiguously.
  const S* src = in + n * st.sn + c0 * st.sc;
  const int64_t bw = box.x1 - box.x0;
  for (int64_t y = ya; y < yb; ++y) {
    A* row = buf + (y - box.y0) % ring * bw * CB;
    const S* line = src + y * st.sh + box.x0 * st.sw;
    if (st.sc < st.sw) {  // channels nearer in memory than pixels: read each pixel's channels
      if constexpr (std::is_same_v<S, A>) {
        if (st.sc == 1 && cn == CB) {  // channels-last: one vector per pixel
          for (int64_t x = 0; x < bw; ++x) vstore(row + x * CB, vload<Vec<A, CB>>(line + x * st.sw));
          continue;
        }
      }
      for (int64_t x = 0; x < bw; ++x)
        for (int64_t c = 0; c < CB; ++c) row[x * CB + c] = c < cn ? A(line[x * st.sw + c * st.sc]) : A(0);
    } else {  // planar: read each channel's row
      int64_t x0 = 0;
      if constexpr (std::is_same_v<S, float> && std::is_same_v<A, float>) {
        if (st.sw == 1 && cn == CB) {  // 8 pixels x 8 channels at a time through registers
          for (; x0 + 8 <= bw; x0 += 8) {
            for (int64_t half = 0; half < CB; half += 8)
              transpose8_block(line + half * st.sc + x0, st.sc, row + x0 * CB + half, CB);
          }
        }
      }
      for (int64_t c = 0; c < cn; ++c)
        for (int64_t x = x0; x < bw; ++x) row[x * CB + c] = A(line[c * st.sc + x * st.sw]);
      for (int64_t c = cn; c < CB; ++c)
        for (int64_t x = x0; x < bw; ++x) row[x * CB + c] = A(0);
    }
  }
}

// A forward item's channel block (`copy_rows`), copied on demand a band of rows at a time: `need(y)` before
// reading rows below y. With the RoIs visited by their last row, the rows a RoI reads were mostly copied
// just before it, so they are still in L2 even when the whole block is bigger than it.
// With `ring` rows (fewer than the box's), the buffer holds only the last `ring` rows copied: row y is at
// (y - box.y0) % ring, and `view()` does not apply (the caller maps rows, see compact_taps).
template <int64_t CB, typename S, typename A>
struct BlockRows {
  const S* in;
  const Planes& st;
  int64_t n, c0, cn;
  Box box;
  A* buf;
  int64_t copied, ring;
  BlockRows(const S* in_, const Planes& st_, int64_t n_, int64_t c0_, int64_t cn_, const Box& box_, A* buf_,
            int64_t ring_ = 0)
      : in(in_), st(st_), n(n_), c0(c0_), cn(cn_), box(box_), buf(buf_), copied(box_.y0),
        ring(ring_ > 0 ? ring_ : std::max<int64_t>(box_.y1 - box_.y0, 1)) {}
  View<A> view() const { return View<A>{buf, (box.x1 - box.x0) * CB, CB, box.y0, box.x0}; }
  void need(int64_t y) {
    y = std::min(y, box.y1);
    if (y <= copied) return;
    copy_rows<CB, S, A>(in, st, n, c0, cn, box, buf, std::max(copied, y - ring), y, ring);  // older rows: overwritten
    copied = y;
  }
};

// grad_input[n, c0:c0+cn] (contiguous [N, C, H, W]) from the channels-last sums `acc` over `box`; zero elsewhere.
template <int64_t CB, typename S, typename A>
void store_block(S* gi, int64_t c, int64_t h, int64_t w, int64_t n, int64_t c0, int64_t cn, const Box& box,
                 const A* acc) {
  const int64_t bw = box.x1 - box.x0;
  S* planes = gi + (n * c + c0) * h * w;
  for (int64_t y = 0; y < h; ++y) {
    if (box.empty() || y < box.y0 || y >= box.y1) {
      for (int64_t j = 0; j < cn; ++j) std::fill(planes + j * h * w + y * w, planes + j * h * w + (y + 1) * w, S(0));
      continue;
    }
    S* rows[CB];
    for (int64_t j = 0; j < cn; ++j) {
      rows[j] = planes + j * h * w + y * w;
      std::fill(rows[j], rows[j] + box.x0, S(0));
      std::fill(rows[j] + box.x1, rows[j] + w, S(0));
    }
    // one pass over the channels-last row: each pixel's CB lanes go to CB output rows
    const A* src = acc + (y - box.y0) * bw * CB;
    if (cn == CB) {
      int64_t x = 0;
      if constexpr (std::is_same_v<S, float> && std::is_same_v<A, float>) {
        for (; x + 8 <= bw; x += 8) {  // 8 pixels x 8 channels at a time through registers
          for (int64_t half = 0; half < CB; half += 8)
            transpose8_block(src + x * CB + half, CB, rows[half] + box.x0 + x, h * w);  // rows: h * w apart
        }
      }
      for (; x < bw; ++x)
        for (int64_t j = 0; j < CB; ++j) rows[j][box.x0 + x] = S(src[x * CB + j]);
    } else {
      for (int64_t x = 0; x < bw; ++x)
        for (int64_t j = 0; j < cn; ++j) rows[j][box.x0 + x] = S(src[x * CB + j]);
    }
  }
}

// Big forward outputs are written with non-temporal stores (whole, aligned cache lines that bypass the
// caches): an ordinary store first reads the line it writes, so a 200 MB output costs 400 MB of traffic.
// Measured: fastrcnn adaptive (200 MB out) 155 -> 125 ms, maskrcnn-mask (20 MB) 20 -> 18 ms at one thread.
// Smaller outputs stay in cache for whatever reads them next.
constexpr int64_t kStreamBytes = int64_t(1) << 23;

bool streams(const at::Tensor& out) {
#ifdef __AVX512F__
  return out.scalar_type() == at::kFloat && int64_t(out.nbytes()) >= kStreamBytes;
#else
  return false;
#endif
}

// After an item's non-temporal stores: they are ordered before anything after it (the region's end).
inline void stream_fence(bool stream) {
#ifdef __AVX512F__
  if (stream) _mm_sfence();
#endif
}

// A RoI's results of one channel block, res [PH * PW, CB], into its output dst [cn, PH * PW] (out +
// (k * C + c0) * bins: contiguous). float32 goes through 8x8 register transposes into `tr` ([CB, PH * PW],
// the output's layout) and is copied out in one run, in non-temporal stores with `stream` (see streams).
template <int64_t CB, typename S, typename A>
void store_tile(S* dst, const A* res, int64_t cn, int64_t bins, A* tr, bool stream) {
  if constexpr (std::is_same_v<S, float> && std::is_same_v<A, float>) {
    if (cn == CB) {
      int64_t b = 0;
      for (; b + 8 <= bins; b += 8) {
        for (int64_t half = 0; half < CB; half += 8)
          transpose8_block(res + b * CB + half, CB, tr + half * bins + b, bins);
      }
      for (; b < bins; ++b)
        for (int64_t j = 0; j < CB; ++j) tr[j * bins + b] = res[b * CB + j];
      const int64_t total = CB * bins;
      int64_t i = 0;
#ifdef __AVX512F__
      if (stream) {
        for (; i < total && (reinterpret_cast<uintptr_t>(dst + i) & 63) != 0; ++i) dst[i] = tr[i];
        for (; i + 16 <= total; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(tr + i));
      }
#endif
      std::memcpy(dst + i, tr + i, (total - i) * sizeof(float));
      return;
    }
  }
  for (int64_t j = 0; j < cn; ++j)
    for (int64_t b = 0; b < bins; ++b) dst[j * bins + b] = S(res[b * CB + j]);
}

// The forward's item list: (image, channel block, RoI chunk), chunks only when blocks are too few.
template <int64_t CB>
struct Items {
  int64_t blocks, chunks;
  std::vector<int64_t> images;  // images with RoIs
  template <typename T>
  Items(const ByImage<T>& by, int64_t n, int64_t c) : blocks((c + CB - 1) / CB) {
    for (int64_t i = 0; i < n; ++i)
      if (by.start[i + 1] > by.start[i]) images.push_back(i);
    const int64_t want = 4 * int64_t(at::get_num_threads());
    const int64_t have = int64_t(images.size()) * blocks;
    chunks = have >= want || have == 0 ? 1 : (want + have - 1) / have;
  }
  int64_t count() const { return int64_t(images.size()) * blocks * chunks; }
};

// Runs f(n, c0, cn, first, last) over the forward's items: RoIs order[first..last) of image n.
template <int64_t CB, typename T, typename F>
void for_each_forward_item(const ByImage<T>& by, int64_t n, int64_t c, int64_t work, std::initializer_list<at::Tensor> fresh,
                           const F& f) {
  Items<CB> items(by, n, c);
  run_items(items.count(), work, [&](int64_t i) {
    const int64_t chunk = i % items.chunks;
    const int64_t block = i / items.chunks % items.blocks;
    const int64_t img = items.images[i / items.chunks / items.blocks];
    const int64_t a = by.start[img], b = by.start[img + 1];
    const int64_t step = (b - a + items.chunks - 1) / items.chunks;
    const int64_t first = std::min(b, a + chunk * step), last = std::min(b, first + step);
    if (first < last) f(img, block * CB, std::min(CB, c - block * CB), first, last);
  }, fresh);
}

// Runs f(n, c0, cn) over every (image, channel block): the backward's items.
template <int64_t CB, typename F>
void for_each_block(int64_t n, int64_t c, int64_t work, const at::Tensor& fresh, const F& f) {
  const int64_t blocks = (c + CB - 1) / CB;
  run_items(n * blocks, work, [&](int64_t i) {
    const int64_t block = i % blocks;
    f(i / blocks, block * CB, std::min(CB, c - block * CB));
  }, {fresh});
}

// The grad tile of RoI k: g[bin][lane] = grad[k, c0 + lane, bin] in the accumulation dtype.
template <int64_t CB, typename S, typename A>
void grad_tile(const S* grad, const at::Tensor& g, int64_t k, int64_t c0, int64_t cn, int64_t pw_, A* tile) {
  const int64_t bins = g.size(2) * pw_;
  const int64_t sk = g.stride(0), sc = g.stride(1), sh = g.stride(2), sw = g.stride(3);
  if (sw == 1 && sh == pw_) {  // each channel's bins contiguous (the usual case)
    if constexpr (std::is_same_v<S, float> && std::is_same_v<A, float>) {
      if (cn == CB) {  // 8 bins x 8 channels at a time through registers, the tail one by one
        const S* src = grad + k * sk + c0 * sc;
        int64_t b = 0;
        for (; b + 8 <= bins; b += 8) {
          for (int64_t half = 0; half < CB; half += 8)
            transpose8_block(src + half * sc + b, sc, tile + b * CB + half, CB);
        }
        for (; b < bins; ++b)
          for (int64_t j = 0; j < CB; ++j) tile[b * CB + j] = src[j * sc + b];
        return;
      }
    }
    for (int64_t j = 0; j < CB; ++j) {
      const S* src = grad + k * sk + (c0 + j) * sc;
      if (j < cn) {
        for (int64_t b = 0; b < bins; ++b) tile[b * CB + j] = A(src[b]);
      } else {
        for (int64_t b = 0; b < bins; ++b) tile[b * CB + j] = A(0);
      }
    }
    return;
  }
  for (int64_t b = 0; b < bins; ++b) {
    const S* src = grad + k * sk + c0 * sc + (b / pw_) * sh + (b % pw_) * sw;
    for (int64_t j = 0; j < CB; ++j) tile[b * CB + j] = j < cn ? A(src[j * sc]) : A(0);
  }
}

// ------------------------------------------------------------------------------------------------
// RoI Align geometry (torchvision's order of operations; see ops/roi_align.py: align_taps)
// ------------------------------------------------------------------------------------------------
template <typename T>
struct Tap {  // one sample along one axis: pixels lo, hi with weights wlo = 1 - frac, whi = frac
  int32_t lo, hi;
  T wlo, whi;
  bool valid;  // inside [-1, size]
};

template <typename T>
struct AlignAxis {
  std::vector<Tap<T>> taps;             // per RoI: [P, G] from offset[k]
  std::vector<int64_t> grid, offset;    // per RoI
  std::vector<std::pair<int64_t, int64_t>> span;  // per RoI: pixels [lo, hi) its valid samples touch

  AlignAxis(const T* rois, int64_t k, int col_start, double spatial_scale, int64_t pooled, int64_t sampling_ratio,
            bool aligned, int64_t size)
      : grid(k), offset(k), span(k) {
    const T scale = T(spatial_scale);
    const T off = aligned ? T(0.5) : T(0);
    for (int64_t r = 0; r < k; ++r) {
      const T start = rois[r * 5 + col_start], end = rois[r * 5 + col_start + 2];
      const T lo = start * scale - off;
      T length = end * scale - off - lo;
      if (!aligned) length = std::max(length, T(1));
      const T bin = length / T(pooled);
      int64_t g = sampling_ratio;
      if (g <= 0) {
        const T up = std::ceil(bin);
        g = up <= T(0) ? 0 : up >= T(1 << 24) ? (1 << 24) : int64_t(up);
      }
      grid[r] = g;
      offset[r] = int64_t(taps.size());
      int64_t smin = size, smax = 0;
      for (int64_t p = 0; p < pooled; ++p) {
        for (int64_t i = 0; i < g; ++i) {
          T pos = (lo + T(p) * bin) + ((T(i) + T(0.5)) * bin) / T(g);
          Tap<T> t{0, 0, T(0), T(0), false};
          if (pos >= T(-1) && pos <= T(size) && size > 0) {
            pos = std::max(pos, T(0));
            int64_t low = int64_t(pos);
            T frac;
            if (low >= size - 1) {
              low = size - 1;
              frac = T(0);
              t.hi = int32_t(low);
            } else {
              frac = pos - T(low);
              t.hi = int32_t(low + 1);
            }
            t.lo = int32_t(low);
            t.wlo = T(1) - frac;
            t.whi = frac;
            t.valid = true;
            smin = std::min<int64_t>(smin, t.lo);
            smax = std::max<int64_t>(smax, t.hi + 1);
          }
          taps.push_back(t);
        }
      }
      span[r] = {smin, smax};
    }
  }
  const Tap<T>* bin(int64_t r, int64_t p) const { return taps.data() + offset[r] + p * grid[r]; }
  Box box(int64_t r, const AlignAxis& x) const {
    return Box{span[r].first, span[r].second, x.span[r].first, x.span[r].second};
  }
};

// A valid sample along one axis, with its pixels as offsets into a View (row or column part).
template <typename A>
struct Offs {
  int64_t lo, hi;
  A wlo, whi;
};

// The valid samples of each of a RoI's P bins along one axis: out[p * g .. p * g + count[p]). Pixel i is at
// offset (i - origin) * stride, or at place[i] where given (a map row in a BlockRows ring).
template <typename A>
void compact_taps(const Tap<A>* taps, int64_t pooled, int64_t g, int64_t origin, int64_t stride, Offs<A>* out,
                  int64_t* count, const int64_t* place = nullptr) {
  for (int64_t p = 0; p < pooled; ++p) {
    count[p] = 0;
    for (int64_t i = 0; i < g; ++i) {
      const Tap<A>& t = taps[p * g + i];
      if (!t.valid) continue;
      out[p * g + count[p]++] = place ? Offs<A>{place[t.lo], place[t.hi], t.wlo, t.whi}
                                      : Offs<A>{(t.lo - origin) * stride, (t.hi - origin) * stride, t.wlo, t.whi};
    }
  }
}


// One bilinear sample of CB channels, torchvision's way: ((w1 v1 + w2 v2) + w3 v3) + w4 v4.
template <typename V, typename A>
inline V sample(const View<A>& v, const Tap<A>& ty, const Tap<A>& tx) {
  const A w1 = ty.wlo * tx.wlo, w2 = ty.wlo * tx.whi, w3 = ty.whi * tx.wlo, w4 = ty.whi * tx.whi;
  return w1 * vload<V>(v.at(ty.lo, tx.lo)) + w2 * vload<V>(v.at(ty.lo, tx.hi)) + w3 * vload<V>(v.at(ty.hi, tx.lo)) +
         w4 * vload<V>(v.at(ty.hi, tx.hi));
}

// roi_align avg's forward visits work in units: a few consecutive bin rows of one RoI, reading at most
// kRingBytes of a channel block's rows (or one bin row, whatever it reads), taken by their last row. A
// forward item then holds only the last `window` rows of its block (a BlockRows ring) instead of all of
// them: the ring stays in L2 where the whole block (3.5 MB for 16 channels of a 200x272 map) would be
// written out to L3 and read back each item (maskrcnn-mask at one thread: 0.82x the time, A/B in one process).
// A RoI's results stay in one of `active` slots (Slots) from its first unit to its last. Where the slots
// would take more than kSlotBytes (many tall RoIs begun at once), an image's RoIs are whole units instead:
// one slot, and the whole-block buffer's traffic, but no memory that grows with K.
constexpr int64_t kRingBytes = int64_t(1) << 19;
constexpr int64_t kSlotBytes = int64_t(1) << 21;

template <typename A>
struct RowUnits {
  struct Unit {
    int64_t roi, y0, y1, lo, hi;  // bin rows [y0, y1) of RoI `roi` read map rows [lo, hi)
  };
  std::vector<Unit> units;                  // image by image; within one, by last row (hi)
  std::vector<int64_t> start, window, active;  // per image: units[start[n] .. start[n + 1]), see above
  std::vector<int64_t> position;            // per RoI: its place in ByImage::order

  RowUnits(const ByImage<A>& by, const AlignAxis<A>& ay, const AlignAxis<A>& ax, int64_t n, int64_t ph, int64_t pw,
           int64_t lane_bytes)
      : start(n + 1, 0), window(n, 1), active(n, 0), position(by.order.size()) {
    for (int64_t img = 0; img < n; ++img) {
      int64_t x0 = std::numeric_limits<int64_t>::max(), x1 = 0;
      for (int64_t i = by.start[img]; i < by.start[img + 1]; ++i) {
        const auto& span = ax.span[by.order[i]];
        if (span.second > span.first) x0 = std::min(x0, span.first), x1 = std::max(x1, span.second);
      }
      plan(by, ay, img, ph, std::max<int64_t>(1, kRingBytes / (std::max<int64_t>(x1 - x0, 1) * lane_bytes)));
      if (active[img] * ph * pw * lane_bytes > kSlotBytes) {
        units.resize(start[img]);
        plan(by, ay, img, ph, std::numeric_limits<int64_t>::max());
      }
      start[img + 1] = int64_t(units.size());
    }
  }

 private:
  // Image img's units (each reading at most `limit` rows, or one bin row), sorted, and its window and active.
  void plan(const ByImage<A>& by, const AlignAxis<A>& ay, int64_t img, int64_t ph, int64_t limit) {
    const int64_t a = by.start[img], b = by.start[img + 1];
    const size_t begin = units.size();
    for (int64_t i = a; i < b; ++i) {
      const int64_t roi = by.order[i], g = ay.grid[roi];
      position[roi] = i;
      Unit u{roi, 0, 0, 0, 0};
      for (int64_t y = 0; y < ph; ++y) {
        int64_t lo = 0, hi = 0;  // the rows bin row y reads (none: lo == hi)
        for (const Tap<A>* t = ay.bin(roi, y); t < ay.bin(roi, y) + g; ++t) {
          if (t->valid) lo = hi > lo ? std::min<int64_t>(lo, t->lo) : t->lo, hi = std::max<int64_t>(hi, t->hi + 1);
        }
        const int64_t both_lo = u.hi == u.lo ? lo : hi == lo ? u.lo : std::min(lo, u.lo);
        const int64_t both_hi = std::max(hi, u.hi);
        if (y > u.y0 && both_hi - both_lo > limit) {  // bin row y starts the next unit
          units.push_back(u);
          u = Unit{roi, y, y + 1, lo, hi};
        } else {
          u.y1 = y + 1, u.lo = both_lo, u.hi = both_hi;
        }
      }
      units.push_back(u);
    }
    std::stable_sort(units.begin() + begin, units.end(), [](const Unit& p, const Unit& q) { return p.hi < q.hi; });
    std::unordered_map<int64_t, int64_t> left;  // bin rows to go, per RoI begun
    int64_t now = 0;
    window[img] = 1, active[img] = 0;
    for (size_t j = begin; j < units.size(); ++j) {
      const Unit& u = units[j];
      window[img] = std::max(window[img], u.hi - u.lo);
      auto [it, first] = left.try_emplace(u.roi, ph);
      if (first) active[img] = std::max(active[img], ++now);
      if ((it->second -= u.y1 - u.y0) == 0) --now;
    }
  }
};

// Slots for the results of the RoIs a forward item has begun and not finished: `take(i)` gives RoI i's
// (a free one on its first call), `give(i)` frees it.
template <typename A>
struct Slots {
  A* base;
  int64_t size;
  std::vector<int64_t> of, free;
  int64_t used = 0;
  Slots(A* base_, int64_t size_, int64_t rois) : base(base_), size(size_), of(rois, -1) {}
  A* take(int64_t i) {
    if (of[i] < 0) {
      of[i] = free.empty() ? used++ : free.back();
      if (!free.empty()) free.pop_back();
    }
    return base + of[i] * size;
  }
  void give(int64_t i) { free.push_back(of[i]); }
};

template <int64_t CB, typename S>
std::tuple<at::Tensor, at::Tensor> align_forward_impl(const at::Tensor& input, const at::Tensor& rois, double scale,
                                                      int64_t ph, int64_t pw, int64_t sr, bool aligned, bool max_mode) {
  using A = acc_t<S>;
  const int64_t n = input.size(0), c = input.size(1), h = input.size(2), w = input.size(3), k = rois.size(0);
  at::Tensor out = at::empty({k, c, ph, pw}, input.options());
  at::Tensor argmax = max_mode ? at::empty({k, c, ph, pw}, input.options().dtype(at::kInt))
                               : at::empty({0}, input.options().dtype(at::kInt));
  if (out.numel() == 0) return {out, argmax};
  const A* r = rois.data_ptr<A>();
  ByImage<A> by(r, k, n);
  const AlignAxis<A> ay(r, k, 2, scale, ph, sr, aligned, h), ax(r, k, 1, scale, pw, sr, aligned, w);
  by.sort_by_rows(ay.span);
  const S* in = input.data_ptr<S>();
  const Planes st(input);
  S* o = out.data_ptr<S>();
  int32_t* am = max_mode ? argmax.data_ptr<int32_t>() : nullptr;
  const int64_t bins = ph * pw;
  using V = Vec<A, CB>;
  using M = Mask<A, CB>;
  const bool stream = streams(out);
  const RowUnits<A> plan(by, ay, ax, max_mode ? 0 : n, ph, pw, CB * int64_t(sizeof(A)));
  for_each_forward_item<CB>(by, n, c, out.numel() + input.numel(), {out, argmax}, [&](int64_t img, int64_t c0, int64_t cn, int64_t first, int64_t last) {
    Box box;
    for (int64_t i = first; i < last; ++i) box.add(ay.box(by.order[i], ax));
    Scratch<A, 0> sbuf;
    Scratch<A, 1> sres;
    Scratch<A, 7> str;
    A* tr = str.get(bins * CB);  // [CB, PH * PW]
    Scratch<Offs<A>, 3> soy;
    Scratch<Offs<A>, 4> sox;
    Scratch<int64_t, 5> sny;
    Scratch<int64_t, 6> snx;
    const int64_t bw = box.x1 - box.x0;
    if (!max_mode) {
      const int64_t ring = std::max<int64_t>(1, std::min(box.y1 - box.y0, plan.window[img]));
      BlockRows<CB, S, A> block(in, st, img, c0, cn, box, box.empty() ? nullptr : sbuf.get(ring * bw * CB), ring);
      Slots<A> slots(sres.get(plan.active[img] * bins * CB), bins * CB, last - first);  // [PH * PW, CB] each
      std::vector<int64_t> left(last - first, ph);  // bin rows to go, per RoI
      // map row y at buf + place[y]; every row of the map has a place (a RoI whose columns are all outside
      // the map has rows outside the box, whose places it never reads)
      std::vector<int64_t> place(h);
      for (int64_t y = 0; y < h; ++y) place[y] = ((y - box.y0) % ring + ring) % ring * bw * CB;
      for (int64_t j = plan.start[img]; j < plan.start[img + 1]; ++j) {
        const auto& u = plan.units[j];
        const int64_t i = plan.position[u.roi] - first;
        if (i < 0 || i >= last - first) continue;  // another chunk's
        block.need(u.hi);
        A* res = slots.take(i);
        const int64_t roi = u.roi, rows = u.y1 - u.y0;
        const int64_t gy = ay.grid[roi], gx = ax.grid[roi];
        const A count = A(std::max<int64_t>(gy * gx, 1));
        // torchvision's order: sum += ((w1 v1 + w2 v2) + w3 v3) + w4 v4 per valid sample, then / count
        Offs<A>* oy = soy.get(rows * gy + 1);
        Offs<A>* ox = sox.get(pw * gx + 1);
        int64_t* ny = sny.get(rows);
        int64_t* nx = snx.get(pw);
        compact_taps(ay.bin(roi, u.y0), rows, gy, 0, 0, oy, ny, place.data());
        compact_taps(ax.bin(roi, 0), pw, gx, box.x0, CB, ox, nx);
        for (int64_t y = 0; y < rows; ++y) {
          for (int64_t x = 0; x < pw; ++x) {
            V sum = {};
            for (const Offs<A>* a = oy + y * gy; a < oy + y * gy + ny[y]; ++a) {
              const A* rlo = block.buf + a->lo;
              const A* rhi = block.buf + a->hi;
              for (const Offs<A>* b = ox + x * gx; b < ox + x * gx + nx[x]; ++b) {
                const A w1 = a->wlo * b->wlo, w2 = a->wlo * b->whi, w3 = a->whi * b->wlo, w4 = a->whi * b->whi;
                sum += w1 * vload<V>(rlo + b->lo) + w2 * vload<V>(rlo + b->hi) + w3 * vload<V>(rhi + b->lo) +
                       w4 * vload<V>(rhi + b->hi);
              }
            }
            vstore(res + ((u.y0 + y) * pw + x) * CB, sum / count);
          }
        }
        if ((left[i] -= rows) == 0) {
          store_tile<CB, S, A>(o + (roi * c + c0) * bins, res, cn, bins, tr, stream);
          slots.give(i);
        }
      }
      stream_fence(stream);
      return;
    }
    // max: the first largest sample (NaN wins, like torch.max); samples outside the map are 0.
    Scratch<int32_t, 2> sarg;
    BlockRows<CB, S, A> block(in, st, img, c0, cn, box,
                              box.empty() ? nullptr : sbuf.get((box.y1 - box.y0) * bw * CB));
    const View<A> v = block.view();
    A* res = sres.get(bins * CB);  // [PH * PW, CB]
    int32_t* arg = sarg.get(bins * CB);
    for (int64_t i = first; i < last; ++i) {
      const int64_t roi = by.order[i];
      block.need(ay.span[roi].second);
      const int64_t gy = ay.grid[roi], gx = ax.grid[roi];
      for (int64_t y = 0; y < ph; ++y) {
        const Tap<A>* ty = ay.bin(roi, y);
        for (int64_t x = 0; x < pw; ++x) {
          const Tap<A>* tx = ax.bin(roi, x);
          V best = {};
          M a = M{} - 1;
          for (int64_t iy = 0; iy < gy; ++iy) {
            for (int64_t ix = 0; ix < gx; ++ix) {
              const V val = ty[iy].valid && tx[ix].valid ? sample<V>(v, ty[iy], tx[ix]) : V{};
              const M take = iy + ix == 0 ? M{} - 1 : (val > best) | ((val != val) & (best == best));
              best = take ? val : best;
              a = take ? M{} + lane_int<A>(iy * gx + ix) : a;
            }
          }
          vstore(res + (y * pw + x) * CB, best);
          for (int64_t j = 0; j < CB; ++j) arg[(y * pw + x) * CB + j] = int32_t(a[j]);
        }
      }
      store_tile<CB, S, A>(o + (roi * c + c0) * bins, res, cn, bins, tr, stream);
      for (int64_t j = 0; j < cn; ++j) {
        int32_t* adst = am + (roi * c + c0 + j) * bins;
        for (int64_t b = 0; b < bins; ++b) adst[b] = arg[b * CB + j];
      }
    }
    stream_fence(stream);
  });
  return {out, argmax};
}

// acc[tap] += f(g, w) for the 4 taps of every valid sample of one bin (CB lanes), in torchvision's order;
// oy/ox: the bin's valid samples (ny, nx of them) as offsets into acc.
template <typename A, typename V, typename F>
inline void align_scatter(A* acc, const Offs<A>* oy, int64_t ny, const Offs<A>* ox, int64_t nx, const V& g,
                          const F& f) {
  for (const Offs<A>* a = oy; a < oy + ny; ++a) {
    for (const Offs<A>* b = ox; b < ox + nx; ++b) {
      const A w1 = a->wlo * b->wlo, w2 = a->wlo * b->whi, w3 = a->whi * b->wlo, w4 = a->whi * b->whi;
      A* p1 = acc + a->lo + b->lo;
      vstore(p1, vload<V>(p1) + f(g, w1));
      A* p2 = acc + a->lo + b->hi;
      vstore(p2, vload<V>(p2) + f(g, w2));
      A* p3 = acc + a->hi + b->lo;
      vstore(p3, vload<V>(p3) + f(g, w3));
      A* p4 = acc + a->hi + b->hi;
      vstore(p4, vload<V>(p4) + f(g, w4));
    }
  }
}

template <int64_t CB, typename S>
at::Tensor align_backward_impl(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax, double scale,
                               int64_t ph, int64_t pw, int64_t sr, bool aligned, bool max_mode, int64_t n, int64_t c,
                               int64_t h, int64_t w) {
  using A = acc_t<S>;
  const int64_t k = rois.size(0);
  at::Tensor gi = at::empty({n, c, h, w}, grad.options());
  if (gi.numel() == 0) return gi;
  if (k == 0) return gi.zero_();
  const A* r = rois.data_ptr<A>();
  const ByImage<A> by(r, k, n);
  const AlignAxis<A> ay(r, k, 2, scale, ph, sr, aligned, h), ax(r, k, 1, scale, pw, sr, aligned, w);
  const S* g = grad.data_ptr<S>();
  const int32_t* am = max_mode ? argmax.data_ptr<int32_t>() : nullptr;
  S* out = gi.data_ptr<S>();
  const int64_t bins = ph * pw;
  using V = Vec<A, CB>;
  for_each_block<CB>(n, c, grad.numel() + gi.numel(), gi, [&](int64_t img, int64_t c0, int64_t cn) {
    Box box;
    for (int64_t i = by.start[img]; i < by.start[img + 1]; ++i) box.add(ay.box(by.order[i], ax));
    Scratch<A, 0> sacc;
    Scratch<A, 1> stile;
    const int64_t bw = box.x1 - box.x0;
    A* acc = box.empty() ? nullptr : sacc.get((box.y1 - box.y0) * bw * CB);  // [rows, cols, CB]
    if (acc) std::fill(acc, acc + (box.y1 - box.y0) * bw * CB, A(0));
    A* tile = stile.get(bins * CB);
    auto at = [&](int64_t y, int64_t x) { return acc + ((y - box.y0) * bw + (x - box.x0)) * CB; };
    Scratch<Offs<A>, 3> soy;
    Scratch<Offs<A>, 4> sox;
    Scratch<int64_t, 5> sny;
    Scratch<int64_t, 6> snx;
    for (int64_t i = by.start[img]; i < by.start[img + 1] && acc; ++i) {
      const int64_t roi = by.order[i];
      const int64_t gy = ay.grid[roi], gx = ax.grid[roi];
      if (gy * gx == 0) continue;
      grad_tile<CB, S, A>(g, grad, roi, c0, cn, pw, tile);
      const A count = A(gy * gx);
      const A inv = A(1) / count;
      const bool pow2 = ((gy * gx) & (gy * gx - 1)) == 0;
      Offs<A>* oy = soy.get(ph * gy);
      Offs<A>* ox = sox.get(pw * gx);
      int64_t* ny = sny.get(ph);
      int64_t* nx = snx.get(pw);
      if (!max_mode) {
        compact_taps(ay.bin(roi, 0), ph, gy, box.y0, bw * CB, oy, ny);
        compact_taps(ax.bin(roi, 0), pw, gx, box.x0, CB, ox, nx);
      }
      for (int64_t y = 0; y < ph; ++y) {
        const Tap<A>* ty = ay.bin(roi, y);
        for (int64_t x = 0; x < pw; ++x) {
          const Tap<A>* tx = ax.bin(roi, x);
          const A* gb = tile + (y * pw + x) * CB;
          const V gv = vload<V>(gb);
          if (max_mode) {  // each lane's gradient goes to the four taps of its winning sample
            const int32_t* a = am + (roi * c + c0) * bins + y * pw + x;
            for (int64_t j = 0; j < cn; ++j) {
              const int64_t s = a[j * bins];
              if (s < 0) continue;
              const Tap<A>& sy = ty[s / gx];
              const Tap<A>& sx = tx[s % gx];
              if (!sy.valid || !sx.valid) continue;
              at(sy.lo, sx.lo)[j] += gb[j] * (sy.wlo * sx.wlo);
              at(sy.lo, sx.hi)[j] += gb[j] * (sy.wlo * sx.whi);
              at(sy.hi, sx.lo)[j] += gb[j] * (sy.whi * sx.wlo);
              at(sy.hi, sx.hi)[j] += gb[j] * (sy.whi * sx.whi);
            }
            continue;
          }
          // torchvision's (g * w) / count, in its order (RoI, bin, sample, tap): the same bits. For a
          // power-of-two count, multiplying by its reciprocal is exact and the same.
          const Offs<A>* by_ = oy + y * gy;
          const Offs<A>* bx_ = ox + x * gx;
          if (pow2) {
            align_scatter(acc, by_, ny[y], bx_, nx[x], gv, [inv](const V& g, A w) { return g * w * inv; });
          } else {
            align_scatter(acc, by_, ny[y], bx_, nx[x], gv, [count](const V& g, A w) { return g * w / count; });
          }
        }
      }
    }
    store_block<CB, S, A>(out, c, h, w, img, c0, cn, box, acc);
  });
  return gi;
}

// ------------------------------------------------------------------------------------------------
// RoI Pool (see ops/roi_pool.py: pool_windows)
// ------------------------------------------------------------------------------------------------
template <typename T>
struct PoolAxis {
  std::vector<int32_t> first, last;  // per RoI: [P] window starts / ends (exclusive), clipped to [0, size]
  std::vector<std::pair<int64_t, int64_t>> span;
  int64_t pooled;

  PoolAxis(const T* rois, int64_t k, int col_start, double spatial_scale, int64_t pooled_, int64_t size)
      : first(k * pooled_), last(k * pooled_), span(k), pooled(pooled_) {
    const T scale = T(spatial_scale);
    const T big = T(int64_t(1) << 40);
    for (int64_t r = 0; r < k; ++r) {
      const int64_t lo = int64_t(std::min(std::max(std::round(rois[r * 5 + col_start] * scale), -big), big));
      const int64_t hi = int64_t(std::min(std::max(std::round(rois[r * 5 + col_start + 2] * scale), -big), big));
      const T bin = T(std::max<int64_t>(hi - lo + 1, 1)) / T(pooled);
      int64_t smin = size, smax = 0;
      for (int64_t p = 0; p < pooled; ++p) {
        const int64_t a = std::min<int64_t>(std::max<int64_t>(int64_t(std::floor(T(p) * bin)) + lo, 0), size);
        const int64_t b = std::min<int64_t>(std::max<int64_t>(int64_t(std::ceil(T(p + 1) * bin)) + lo, 0), size);
        first[r * pooled + p] = int32_t(a);
        last[r * pooled + p] = int32_t(b);
        if (b > a) smin = std::min(smin, a), smax = std::max(smax, b);
      }
      span[r] = {smin, smax};
    }
  }
  Box box(int64_t r, const PoolAxis& x) const {
    return Box{span[r].first, span[r].second, x.span[r].first, x.span[r].second};
  }
};

// WithArg false: the values alone (eager inference), argmax an empty tensor.
template <int64_t CB, typename S, bool WithArg>
std::tuple<at::Tensor, at::Tensor> pool_forward_impl(const at::Tensor& input, const at::Tensor& rois, double scale,
                                                     int64_t ph, int64_t pw) {
  using A = acc_t<S>;
  const int64_t n = input.size(0), c = input.size(1), h = input.size(2), w = input.size(3), k = rois.size(0);
  at::Tensor out = at::empty({k, c, ph, pw}, input.options());
  at::Tensor argmax = WithArg ? at::empty({k, c, ph, pw}, input.options().dtype(at::kInt))
                              : at::empty({0}, input.options().dtype(at::kInt));
  if (out.numel() == 0) return {out, argmax};
  const A* r = rois.data_ptr<A>();
  ByImage<A> by(r, k, n);
  const PoolAxis<A> ay(r, k, 2, scale, ph, h), ax(r, k, 1, scale, pw, w);
  by.sort_by_rows(ay.span);
  const S* in = input.data_ptr<S>();
  const Planes st(input);
  S* o = out.data_ptr<S>();
  int32_t* am = WithArg ? argmax.data_ptr<int32_t>() : nullptr;
  const int64_t bins = ph * pw;
  using V = Vec<A, CB>;
  using M = Mask<A, CB>;
  using L = lane_int<A>;
  constexpr L kNone = std::numeric_limits<int32_t>::max();  // "no argmax yet": loses every tie
  const bool stream = streams(out);
  for_each_forward_item<CB>(by, n, c, out.numel() + input.numel(), {out, argmax}, [&](int64_t img, int64_t c0, int64_t cn, int64_t first, int64_t last) {
    Box box;
    for (int64_t i = first; i < last; ++i) box.add(ay.box(by.order[i], ax));
    Scratch<A, 0> sbuf;
    Scratch<A, 1> sres;
    Scratch<int32_t, 2> sarg;
    BlockRows<CB, S, A> block(in, st, img, c0, cn, box,
                              box.empty() ? nullptr : sbuf.get((box.y1 - box.y0) * (box.x1 - box.x0) * CB));
    const View<A> v = block.view();
    A* res = sres.get(bins * CB);  // [PH * PW, CB]
    Scratch<A, 7> str;
    A* tr = str.get(bins * CB);  // [CB, PH * PW]
    int32_t* arg = sarg.get(bins * CB);
    for (int64_t i = first; i < last; ++i) {
      const int64_t roi = by.order[i];
      block.need(ay.span[roi].second);
      for (int64_t y = 0; y < ph; ++y) {
        const int64_t y0 = ay.first[roi * ph + y], y1 = ay.last[roi * ph + y];
        for (int64_t x = 0; x < pw; ++x) {
          const int64_t x0 = ax.first[roi * pw + x], x1 = ax.last[roi * pw + x];
          if (y1 <= y0 || x1 <= x0) {  // empty bin: 0, no argmax
            vstore(res + (y * pw + x) * CB, V{});
            for (int64_t j = 0; j < CB; ++j) arg[(y * pw + x) * CB + j] = -1;
            continue;
          }
          // Four running maxima over the columns x0 + 4i + q (and the tail in chain 0), each a strict
          // '>' scan in row-major order that starts at -FLT_MAX: its first maximum, never NaN. The
          // merge takes the larger value and, on a tie, the smaller index: torchvision's single scan.
          V best[4];
          M a[4];
          for (int q = 0; q < 4; ++q) best[q] = V{} - A(FLT_MAX), a[q] = M{} + kNone;
          auto step = [&](int q, const A* p, L idx) {
            const V val = vload<V>(p);
            const M take = val > best[q];
            best[q] = take ? val : best[q];
            if constexpr (WithArg) a[q] = take ? M{} + idx : a[q];
          };
          for (int64_t yy = y0; yy < y1; ++yy) {
            const A* line = v.at(yy, x0);
            const L row = L(yy * w);
            int64_t xx = x0;
            for (; xx + 4 <= x1; xx += 4, line += 4 * v.ps) {
              step(0, line, row + L(xx));
              step(1, line + v.ps, row + L(xx + 1));
              step(2, line + 2 * v.ps, row + L(xx + 2));
              step(3, line + 3 * v.ps, row + L(xx + 3));
            }
            for (; xx < x1; ++xx, line += v.ps) step(0, line, row + L(xx));
          }
          for (int q = 1; q < 4; ++q) {
            if constexpr (WithArg) {
              const M take = (best[q] > best[0]) | ((best[q] == best[0]) & (a[q] < a[0]));
              best[0] = take ? best[q] : best[0];
              a[0] = take ? a[q] : a[0];
            } else {
              best[0] = best[q] > best[0] ? best[q] : best[0];
            }
          }
          vstore(res + (y * pw + x) * CB, best[0]);
          if constexpr (WithArg)
            for (int64_t j = 0; j < CB; ++j) arg[(y * pw + x) * CB + j] = a[0][j] == kNone ? -1 : int32_t(a[0][j]);
        }
      }
      store_tile<CB, S, A>(o + (roi * c + c0) * bins, res, cn, bins, tr, stream);
      for (int64_t j = 0; j < cn && WithArg; ++j) {
        int32_t* adst = am + (roi * c + c0 + j) * bins;
        for (int64_t b = 0; b < bins; ++b) adst[b] = arg[b * CB + j];
      }
    }
    stream_fence(stream);
  });
  return {out, argmax};
}

template <int64_t CB, typename S>
at::Tensor pool_backward_impl(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax, double scale,
                              int64_t ph, int64_t pw, int64_t n, int64_t c, int64_t h, int64_t w) {
  using A = acc_t<S>;
  const int64_t k = rois.size(0);
  at::Tensor gi = at::empty({n, c, h, w}, grad.options());
  if (gi.numel() == 0) return gi;
  if (k == 0) return gi.zero_();
  const A* r = rois.data_ptr<A>();
  const ByImage<A> by(r, k, n);
  const PoolAxis<A> ay(r, k, 2, scale, ph, h), ax(r, k, 1, scale, pw, w);
  const S* g = grad.data_ptr<S>();
  const int32_t* am = argmax.data_ptr<int32_t>();
  S* out = gi.data_ptr<S>();
  const int64_t bins = ph * pw;
  for_each_block<CB>(n, c, grad.numel() + gi.numel(), gi, [&](int64_t img, int64_t c0, int64_t cn) {
    if constexpr (std::is_same_v<S, A>) {  // float32/float64: sum straight into grad_input's planes
      S* planes = out + (img * c + c0) * h * w;
      std::fill(planes, planes + cn * h * w, S(0));
      const int64_t sk = grad.stride(0), sc = grad.stride(1), sh = grad.stride(2), sw = grad.stride(3);
      for (int64_t i = by.start[img]; i < by.start[img + 1]; ++i) {  // RoI, bin order: torchvision's sums
        const int64_t roi = by.order[i];
        for (int64_t j = 0; j < cn; ++j) {
          const int32_t* a = am + (roi * c + c0 + j) * bins;
          const S* gj = g + roi * sk + (c0 + j) * sc;
          S* plane = planes + j * h * w;
          for (int64_t b = 0; b < bins; ++b)
            if (a[b] >= 0) plane[a[b]] += gj[(b / pw) * sh + (b % pw) * sw];
        }
      }
      return;
    }
    // half types: sum in float32 over a channels-last buffer, round once
    Box box;
    for (int64_t i = by.start[img]; i < by.start[img + 1]; ++i) box.add(ay.box(by.order[i], ax));
    Scratch<A, 0> sacc;
    Scratch<A, 1> stile;
    const int64_t bw = box.x1 - box.x0;
    A* acc = box.empty() ? nullptr : sacc.get((box.y1 - box.y0) * bw * CB);
    if (acc) std::fill(acc, acc + (box.y1 - box.y0) * bw * CB, A(0));
    A* tile = stile.get(bins * CB);
    for (int64_t i = by.start[img]; i < by.start[img + 1] && acc; ++i) {
      const int64_t roi = by.order[i];
      grad_tile<CB, S, A>(g, grad, roi, c0, cn, pw, tile);
      for (int64_t j = 0; j < cn; ++j) {
        const int32_t* a = am + (roi * c + c0 + j) * bins;
        for (int64_t b = 0; b < bins; ++b) {
          if (a[b] < 0) continue;
          const int64_t y = a[b] / w, x = a[b] % w;
          acc[((y - box.y0) * bw + (x - box.x0)) * CB + j] += tile[b * CB + j];
        }
      }
    }
    store_block<CB, S, A>(out, c, h, w, img, c0, cn, box, acc);
  });
  return gi;
}

// ------------------------------------------------------------------------------------------------
// Precise RoI Pooling (see ops/precise.py: integral_taps), geometry in float64
// ------------------------------------------------------------------------------------------------
struct IntegralAxis {
  std::vector<int32_t> first, count;  // per (RoI, P): pixels first .. first + count - 1
  std::vector<int64_t> offset;        // per (RoI, P): into weight
  std::vector<double> weight;
  std::vector<std::pair<int64_t, int64_t>> span;
  int64_t pooled;

  static double tent_integral(double a, double b, double i) {  // integral of tri(t - i) over [a, b]
    double total = 0.0;
    for (int piece = 0; piece < 2; ++piece) {
      const double lo = piece == 0 ? i - 1 : i, hi = piece == 0 ? i : i + 1;
      const double left = std::max(a, lo), right = std::min(b, hi);
      const double length = std::max(right - left, 0.0);
      total = total + length * std::max(1.0 - std::abs((left + right) / 2 - i), 0.0);
    }
    return total;
  }

  template <typename T>
  IntegralAxis(const T* rois, int64_t k, int col_start, double spatial_scale, int64_t pooled_, bool aligned,
               int64_t size)
      : first(k * pooled_), count(k * pooled_), offset(k * pooled_), span(k), pooled(pooled_) {
    const double off = aligned ? 0.5 : 0.0;
    for (int64_t r = 0; r < k; ++r) {
      const double start = double(rois[r * 5 + col_start]), end = double(rois[r * 5 + col_start + 2]);
      const double lo = start * spatial_scale - off;
      const double bin = (end * spatial_scale - off - lo) / double(pooled);
      int64_t smin = size, smax = 0;
      for (int64_t p = 0; p < pooled; ++p) {
        const double e0 = lo + double(p) * bin, e1 = lo + double(p + 1) * bin;
        const double a = std::min(e0, e1), b = std::max(e0, e1);
        const double fa = std::min(std::max(std::floor(a), 0.0), double(size - 1));
        const double fb = std::min(std::max(std::ceil(b), 0.0), double(size - 1));
        const int64_t i0 = int64_t(fa), i1 = int64_t(fb);
        const double width = b - a;
        first[r * pooled + p] = int32_t(i0);
        count[r * pooled + p] = int32_t(i1 - i0 + 1);
        offset[r * pooled + p] = int64_t(weight.size());
        for (int64_t i = i0; i <= i1; ++i) {
          const double fi = double(i);
          weight.push_back(width > 0 ? tent_integral(a, b, fi) / std::max(width, 1e-300)
                                     : std::max(1.0 - std::abs(a - fi), 0.0));
        }
        smin = std::min(smin, i0), smax = std::max(smax, i1 + 1);
      }
      span[r] = {smin, smax};
    }
  }
  Box box(int64_t r, const IntegralAxis& x) const {
    return Box{span[r].first, span[r].second, x.span[r].first, x.span[r].second};
  }
};

template <int64_t CB, typename S>
at::Tensor precise_forward_impl(const at::Tensor& input, const at::Tensor& rois, double scale, int64_t ph,
                                int64_t pw, bool aligned) {
  using A = acc_t<S>;
  const int64_t n = input.size(0), c = input.size(1), h = input.size(2), w = input.size(3), k = rois.size(0);
  at::Tensor out = at::empty({k, c, ph, pw}, input.options());
  if (out.numel() == 0) return out;
  const A* r = rois.data_ptr<A>();
  ByImage<A> by(r, k, n);
  if (h == 0 || w == 0) return out.zero_();
  const IntegralAxis ay(r, k, 2, scale, ph, aligned, h), ax(r, k, 1, scale, pw, aligned, w);
  by.sort_by_rows(ay.span);
  const S* in = input.data_ptr<S>();
  const Planes st(input);
  S* o = out.data_ptr<S>();
  const int64_t bins = ph * pw;
  using V = Vec<A, CB>;
  const bool stream = streams(out);
  for_each_forward_item<CB>(by, n, c, out.numel() + input.numel(), {out}, [&](int64_t img, int64_t c0, int64_t cn, int64_t first, int64_t last) {
    Box box;
    for (int64_t i = first; i < last; ++i) box.add(ay.box(by.order[i], ax));
    Scratch<A, 0> sbuf;
    Scratch<A, 1> sres;
    BlockRows<CB, S, A> block(in, st, img, c0, cn, box, sbuf.get((box.y1 - box.y0) * (box.x1 - box.x0) * CB));
    const View<A> v = block.view();
    A* res = sres.get(bins * CB);  // [PH * PW, CB]
    Scratch<A, 7> str;
    A* tr = str.get(bins * CB);  // [CB, PH * PW]
    for (int64_t i = first; i < last; ++i) {
      const int64_t roi = by.order[i];
      block.need(ay.span[roi].second);
      for (int64_t y = 0; y < ph; ++y) {
        const int64_t ry = roi * ph + y;
        const double* wy = ay.weight.data() + ay.offset[ry];
        for (int64_t x = 0; x < pw; ++x) {
          const int64_t rx = roi * pw + x;
          const double* wx = ax.weight.data() + ax.offset[rx];
          V sum = {};
          for (int64_t iy = 0; iy < ay.count[ry]; ++iy) {
            for (int64_t ix = 0; ix < ax.count[rx]; ++ix) {
              const A wt = A(wy[iy] * wx[ix]);
              if (wt == A(0)) continue;
              sum += wt * vload<V>(v.at(ay.first[ry] + iy, ax.first[rx] + ix));
            }
          }
          vstore(res + (y * pw + x) * CB, sum);
        }
      }
      store_tile<CB, S, A>(o + (roi * c + c0) * bins, res, cn, bins, tr, stream);
    }
    stream_fence(stream);
  });
  return out;
}

template <int64_t CB, typename S>
at::Tensor precise_backward_impl(const at::Tensor& grad, const at::Tensor& rois, double scale, int64_t ph,
                                 int64_t pw, bool aligned, int64_t n, int64_t c, int64_t h, int64_t w) {
  using A = acc_t<S>;
  const int64_t k = rois.size(0);
  at::Tensor gi = at::empty({n, c, h, w}, grad.options());
  if (gi.numel() == 0) return gi;
  if (k == 0) return gi.zero_();
  const A* r = rois.data_ptr<A>();
  const ByImage<A> by(r, k, n);
  const IntegralAxis ay(r, k, 2, scale, ph, aligned, h), ax(r, k, 1, scale, pw, aligned, w);
  const S* g = grad.data_ptr<S>();
  S* out = gi.data_ptr<S>();
  const int64_t bins = ph * pw;
  using V = Vec<A, CB>;
  for_each_block<CB>(n, c, grad.numel() + gi.numel(), gi, [&](int64_t img, int64_t c0, int64_t cn) {
    Box box;
    for (int64_t i = by.start[img]; i < by.start[img + 1]; ++i) box.add(ay.box(by.order[i], ax));
    Scratch<A, 0> sacc;
    Scratch<A, 1> stile;
    const int64_t bw = box.x1 - box.x0;
    A* acc = box.empty() ? nullptr : sacc.get((box.y1 - box.y0) * bw * CB);
    if (acc) std::fill(acc, acc + (box.y1 - box.y0) * bw * CB, A(0));
    A* tile = stile.get(bins * CB);
    for (int64_t i = by.start[img]; i < by.start[img + 1] && acc; ++i) {
      const int64_t roi = by.order[i];
      grad_tile<CB, S, A>(g, grad, roi, c0, cn, pw, tile);
      for (int64_t y = 0; y < ph; ++y) {
        const int64_t ry = roi * ph + y;
        const double* wy = ay.weight.data() + ay.offset[ry];
        for (int64_t x = 0; x < pw; ++x) {
          const int64_t rx = roi * pw + x;
          const double* wx = ax.weight.data() + ax.offset[rx];
          const V gv = vload<V>(tile + (y * pw + x) * CB);
          for (int64_t iy = 0; iy < ay.count[ry]; ++iy) {
            for (int64_t ix = 0; ix < ax.count[rx]; ++ix) {
              const A wt = A(wy[iy] * wx[ix]);
              if (wt == A(0)) continue;
              A* p = acc + ((ay.first[ry] + iy - box.y0) * bw + (ax.first[rx] + ix - box.x0)) * CB;
              vstore(p, vload<V>(p) + gv * wt);
            }
          }
        }
      }
    }
    store_block<CB, S, A>(out, c, h, w, img, c0, cn, box, acc);
  });
  return gi;
}

// ------------------------------------------------------------------------------------------------
// dtype dispatch and registration (torch.ops.roicli_cpp.*)
// ------------------------------------------------------------------------------------------------
template <typename F>
decltype(auto) dispatch(at::ScalarType t, const F& f) {
  switch (t) {
    case at::kFloat: return f(float{});
    case at::kDouble: return f(double{});
    case at::kHalf: return f(c10::Half{});
    case at::kBFloat16: return f(c10::BFloat16{});
    default: TORCH_CHECK(false, "roicli cpu kernels: expected float32/float64/float16/bfloat16, got ", t);
  }
}

// The channels per block of a call on a map of h x w pixels in accumulation dtype `data` (see kLaneBudget).
// A forward copies its block a band of rows at a time (BlockRows), so only a backward, which sums into
// a buffer of the whole block, keeps narrow blocks on big maps.
int64_t lanes_for(int64_t c, int64_t h, int64_t w, at::ScalarType data, bool forward) {
#ifdef __AVX512F__
  const int64_t bytes = h * w * 16 * (data == at::kDouble ? 8 : 4);
  return c > 8 && (forward || bytes <= kLaneBudget) ? 16 : 8;
#else
  return 8;
#endif
}

// f(std::integral_constant<int64_t, CB>{}) with CB = `lanes` (8 or 16).
template <typename F>
decltype(auto) with_lanes(int64_t lanes, const F& f) {
  if (lanes == 16) return f(std::integral_constant<int64_t, 16>{});
  return f(std::integral_constant<int64_t, 8>{});
}

void check_rois(const at::Tensor& rois, at::ScalarType data) {
  const auto want = data == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(rois.scalar_type() == want && rois.is_contiguous() && rois.dim() == 2 && rois.size(1) == 5,
              "roicli cpu kernels: expected contiguous rois [K, 5] of ", want, ", got ", rois.scalar_type(),
              " ", rois.sizes());
}

void check_plane(int64_t h, int64_t w) {
  TORCH_CHECK(h * w < (int64_t(1) << 31), "roicli cpu kernels: expected H * W < 2^31, got ", h, " x ", w);
}

std::tuple<at::Tensor, at::Tensor> roi_align_forward(const at::Tensor& input, const at::Tensor& rois, double scale,
                                                     int64_t ph, int64_t pw, int64_t sr, bool aligned, int64_t mode) {
  check_rois(rois, input.scalar_type());
  check_plane(input.size(2), input.size(3));
  return with_lanes(lanes_for(input.size(1), input.size(2), input.size(3), rois.scalar_type(), true), [&](auto cb) {
    return dispatch(input.scalar_type(), [&](auto s) {
      return align_forward_impl<decltype(cb)::value, decltype(s)>(input, rois, scale, ph, pw, sr, aligned, mode == 1);
    });
  });
}

at::Tensor roi_align_backward(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax, double scale,
                              int64_t ph, int64_t pw, int64_t sr, bool aligned, int64_t mode, int64_t n, int64_t c,
                              int64_t h, int64_t w) {
  check_rois(rois, grad.scalar_type());
  check_plane(h, w);
  TORCH_CHECK(mode != 1 || (argmax.is_contiguous() && argmax.scalar_type() == at::kInt),
              "roicli cpu kernels: expected a contiguous int32 argmax, got ", argmax.scalar_type());
  return with_lanes(lanes_for(c, h, w, rois.scalar_type(), false), [&](auto cb) {
    return dispatch(grad.scalar_type(), [&](auto s) {
      return align_backward_impl<decltype(cb)::value, decltype(s)>(grad, rois, argmax, scale, ph, pw, sr, aligned, mode == 1, n, c, h, w);
    });
  });
}

std::tuple<at::Tensor, at::Tensor> roi_pool_forward(const at::Tensor& input, const at::Tensor& rois, double scale,
                                                    int64_t ph, int64_t pw) {
  check_rois(rois, input.scalar_type());
  check_plane(input.size(2), input.size(3));
  return with_lanes(lanes_for(input.size(1), input.size(2), input.size(3), rois.scalar_type(), true), [&](auto cb) {
    return dispatch(input.scalar_type(), [&](auto s) {
      return pool_forward_impl<decltype(cb)::value, decltype(s), true>(input, rois, scale, ph, pw);
    });
  });
}

at::Tensor roi_pool_values(const at::Tensor& input, const at::Tensor& rois, double scale, int64_t ph, int64_t pw) {
  check_rois(rois, input.scalar_type());
  check_plane(input.size(2), input.size(3));
  return with_lanes(lanes_for(input.size(1), input.size(2), input.size(3), rois.scalar_type(), true), [&](auto cb) {
    return dispatch(input.scalar_type(), [&](auto s) {
      return std::get<0>(pool_forward_impl<decltype(cb)::value, decltype(s), false>(input, rois, scale, ph, pw));
    });
  });
}

at::Tensor roi_pool_backward(const at::Tensor& grad, const at::Tensor& rois, const at::Tensor& argmax, double scale,
                             int64_t ph, int64_t pw, int64_t n, int64_t c, int64_t h, int64_t w) {
  check_rois(rois, grad.scalar_type());
  check_plane(h, w);
  TORCH_CHECK(argmax.is_contiguous() && argmax.scalar_type() == at::kInt,
              "roicli cpu kernels: expected a contiguous int32 argmax, got ", argmax.scalar_type());
  return with_lanes(lanes_for(c, h, w, rois.scalar_type(), false), [&](auto cb) {
    return dispatch(grad.scalar_type(), [&](auto s) {
      return pool_backward_impl<decltype(cb)::value, decltype(s)>(grad, rois, argmax, scale, ph, pw, n, c, h, w);
    });
  });
}

at::Tensor precise_roi_pool_forward(const at::Tensor& input, const at::Tensor& rois, double scale, int64_t ph,
                                    int64_t pw, bool aligned) {
  check_rois(rois, input.scalar_type());
  check_plane(input.size(2), input.size(3));
  return with_lanes(lanes_for(input.size(1), input.size(2), input.size(3), rois.scalar_type(), true), [&](auto cb) {
    return dispatch(input.scalar_type(), [&](auto s) {
      return precise_forward_impl<decltype(cb)::value, decltype(s)>(input, rois, scale, ph, pw, aligned);
    });
  });
}

at::Tensor precise_roi_pool_backward(const at::Tensor& grad, const at::Tensor& rois, double scale, int64_t ph,
                                     int64_t pw, bool aligned, int64_t n, int64_t c, int64_t h, int64_t w) {
  check_rois(rois, grad.scalar_type());
  check_plane(h, w);
  return with_lanes(lanes_for(c, h, w, rois.scalar_type(), false), [&](auto cb) {
    return dispatch(grad.scalar_type(), [&](auto s) {
      return precise_backward_impl<decltype(cb)::value, decltype(s)>(grad, rois, scale, ph, pw, aligned, n, c, h, w);
    });
  });
}

}  // namespace

TORCH_LIBRARY(roicli_cpp, m) {
  m.def("roi_align_forward", &roi_align_forward);
  m.def("roi_align_backward", &roi_align_backward);
  m.def("roi_pool_forward", &roi_pool_forward);
  m.def("roi_pool_values", &roi_pool_values);
  m.def("roi_pool_backward", &roi_pool_backward);
  m.def("precise_roi_pool_forward", &precise_roi_pool_forward);
  m.def("precise_roi_pool_backward", &precise_roi_pool_backward);
}
