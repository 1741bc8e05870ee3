// Batched Cholesky factorisation and solves of many small SPD blocks on the CPU.
//
// XLA:CPU runs a batch of small factorisations as one LAPACK call per matrix;
// for the video fitter's thousands of 59 x 59 blocks the per-call overhead of
// the triangular solves dominates. Here a chunk of W matrices (W = 64 bytes of
// lanes: 16 floats or 8 doubles) is transposed into a lane-interleaved scratch
// buffer so every scalar operation of the textbook algorithm becomes one SIMD
// operation over W matrices, and chunks are spread over XLA's intra-op thread
// pool. The Python side (fitting/spd_blocks.py) compiles this file on first
// use and falls back to LAPACK when no compiler is available.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

template <typename S>
struct Lanes {
  static constexpr int64_t kWidth = 64 / sizeof(S);
  typedef S Vector __attribute__((vector_size(64)));
};

// Runs body(first_matrix, count) over chunks of W matrices on the calling
// thread and on helpers from the pool. The caller only ever waits for chunks a
// helper has claimed, so a helper that starts late (or never) cannot block it.
template <typename Body>
void for_chunks(ffi::ThreadPool& pool, int64_t matrices, int64_t width, Body body) {
  const int64_t chunks = (matrices + width - 1) / width;
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto state = std::make_shared<State>();
  auto work = [state, chunks, matrices, width, &body]() {
    for (int64_t c = state->next.fetch_add(1); c < chunks; c = state->next.fetch_add(1)) {
      const int64_t first = c * width;
      body(first, std::min(width, matrices - first));
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks / 8);
  // Helpers share the state; `body` is only touched while a chunk is claimed.
  for (int64_t h = 0; h < helpers; ++h) pool.Schedule(decltype(work)(work));
  work();
  while (state->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

// Loads the lower triangle of W masked blocks into lane-interleaved storage:
// masked = a * free_i * free_j + (1 - free_i) on the diagonal (held rows and
// columns become the identity). Lanes past `count` get the identity.
template <typename S>
void load_masked(const S* a, const S* free, int64_t first, int64_t count, int64_t n, S* lanes) {
  constexpr int64_t W = Lanes<S>::kWidth;
  for (int64_t t = 0; t < W; ++t) {
    if (t < count) {
      const S* block = a + (first + t) * n * n;
      const S* mask = free ? free + (first + t) * n : nullptr;
      for (int64_t i = 0; i < n; ++i) {
        const S fi = mask ? mask[i] : S(1);
        for (int64_t j = 0; j <= i; ++j) {
          S value = block[i * n + j] * fi * (mask ? mask[j] : S(1));
          if (i == j) value += S(1) - fi;
          lanes[(i * n + j) * W + t] = value;
        }
      }
    } else {
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j <= i; ++j) lanes[(i * n + j) * W + t] = i == j ? S(1) : S(0);
    }
  }
}

// In-place Cholesky (lower, row-oriented) of W interleaved matrices. A lane
// whose pivot is not positive is marked in `failed` and continues with a unit
// pivot, so the others are unaffected.
template <typename S>
void cholesky_lanes(int64_t n, typename Lanes<S>::Vector* m, bool* failed) {
  using V = typename Lanes<S>::Vector;
  constexpr int64_t W = Lanes<S>::kWidth;
  for (int64_t j = 0; j < n; ++j) {
    const V* row_j = m + j * n;
    V pivot = row_j[j];
    for (int64_t k = 0; k < j; ++k) pivot -= row_j[k] * row_j[k];
    for (int64_t t = 0; t < W; ++t) {
      if (!(pivot[t] > S(0))) {
        failed[t] = true;
        pivot[t] = S(1);
      }
      pivot[t] = std::sqrt(pivot[t]);
    }
    m[j * n + j] = pivot;
    const V inverse = S(1) / pivot;
    int64_t i = j + 1;
    // Four rows at once: independent accumulators share the loads of row j.
    for (; i + 3 < n; i += 4) {
      V* r0 = m + i * n;
      V* r1 = r0 + n;
      V* r2 = r1 + n;
      V* r3 = r2 + n;
      V a0 = r0[j], a1 = r1[j], a2 = r2[j], a3 = r3[j];
      for (int64_t k = 0; k < j; ++k) {
        const V r = row_j[k];
        a0 -= r0[k] * r;
        a1 -= r1[k] * r;
        a2 -= r2[k] * r;
        a3 -= r3[k] * r;
      }
      r0[j] = a0 * inverse;
      r1[j] = a1 * inverse;
      r2[j] = a2 * inverse;
      r3[j] = a3 * inverse;
    }
    for (; i < n; ++i) {
      V* r0 = m + i * n;
      V a0 = r0[j];
      for (int64_t k = 0; k < j; ++k) a0 -= r0[k] * row_j[k];
      r0[j] = a0 * inverse;
    }
  }
}

// Writes the factors of lanes [0, count) to out; a lane whose factorisation
// failed gets the square root of its (masked) diagonal instead: solving with it
// is a diagonally scaled gradient step for that matrix.
template <typename S>
void store_factor(const S* lanes, const S* diagonal, const bool* failed, S* out, int64_t first, int64_t count,
                  int64_t n) {
  constexpr int64_t W = Lanes<S>::kWidth;
  for (int64_t t = 0; t < count; ++t) {
    S* factor = out + (first + t) * n * n;
    std::fill(factor, factor + n * n, S(0));
    if (failed[t]) {
      for (int64_t i = 0; i < n; ++i) factor[i * n + i] = std::sqrt(std::max(diagonal[i * W + t], S(1e-12)));
    } else {
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j <= i; ++j) factor[i * n + j] = lanes[(i * n + j) * W + t];
    }
  }
}

template <typename S>
void save_diagonal(const S* lanes, int64_t n, S* diagonal) {
  constexpr int64_t W = Lanes<S>::kWidth;
  for (int64_t i = 0; i < n; ++i)
    for (int64_t t = 0; t < W; ++t) diagonal[i * W + t] = lanes[(i * n + i) * W + t];
}

template <typename S>
void factor_chunk(const S* a, const S* free, S* out, int64_t first, int64_t count, int64_t n) {
  using V = typename Lanes<S>::Vector;
  constexpr int64_t W = Lanes<S>::kWidth;
  std::unique_ptr<V[]> scratch(new V[n * n + n]);
  S* lanes = reinterpret_cast<S*>(scratch.get());
  S* diagonal = reinterpret_cast<S*>(scratch.get() + n * n);
  load_masked(a, free, first, count, n, lanes);
  save_diagonal(lanes, n, diagonal);
  bool failed[W] = {};
  cholesky_lanes<S>(n, scratch.get(), failed);
  store_factor(lanes, diagonal, failed, out, first, count, n);
}

// The blocks of the video fitter, assembled in the lanes instead of read from
// memory: the leading m × m part is Σ_ab metric_ab G_ab (nine shared Gram
// matrices, per-matrix weights), the last p rows are `border` (p × m) and
// `corner` (p × p), `shift` is added to the diagonal, then held coordinates
// are masked as in load_masked.
template <typename S>
void factor_gram_chunk(const S* metric, const S* gram, const S* border, const S* corner, const S* shift,
                       const S* free, S* out, S* interleaved, int64_t first, int64_t count, int64_t m, int64_t p) {
  using V = typename Lanes<S>::Vector;
  constexpr int64_t W = Lanes<S>::kWidth;
  const int64_t n = m + p;
  std::unique_ptr<V[]> scratch(new V[n * n + 2 * n + 9]());
  V* blocks = scratch.get();
  S* lanes = reinterpret_cast<S*>(blocks);
  S* diagonal = reinterpret_cast<S*>(blocks + n * n);
  V* mask = blocks + n * n + n;
  V* weight = mask + n;
  S* mask_s = reinterpret_cast<S*>(mask);
  S* weight_s = reinterpret_cast<S*>(weight);
  for (int64_t t = 0; t < W; ++t) {
    const bool live = t < count;
    const int64_t f = first + t;
    for (int64_t ab = 0; ab < 9; ++ab) weight_s[ab * W + t] = live ? metric[f * 9 + ab] : S(0);
    for (int64_t i = 0; i < n; ++i) mask_s[i * W + t] = live ? free[f * n + i] : S(1);
  }
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j <= i; ++j) {
      V sum = V{};
      for (int64_t ab = 0; ab < 9; ++ab) sum += weight[ab] * gram[(ab * m + i) * m + j];
      blocks[i * n + j] = sum;
    }
  for (int64_t t = 0; t < W; ++t) {
    const bool live = t < count;
    const int64_t f = first + t;
    for (int64_t r = 0; r < p; ++r) {
      for (int64_t j = 0; j < m; ++j) lanes[((m + r) * n + j) * W + t] = live ? border[(f * p + r) * m + j] : S(0);
      for (int64_t j = 0; j <= r; ++j)
        lanes[((m + r) * n + m + j) * W + t] = live ? corner[(f * p + r) * p + j] : S(0);
    }
    for (int64_t i = 0; i < n; ++i) lanes[(i * n + i) * W + t] += live ? shift[f * n + i] : S(1);
  }
  for (int64_t i = 0; i < n; ++i) {
    const V fi = mask[i];
    for (int64_t j = 0; j < i; ++j) blocks[i * n + j] *= fi * mask[j];
    blocks[i * n + i] = blocks[i * n + i] * fi + (S(1) - fi);
  }
  save_diagonal(lanes, n, diagonal);
  bool failed[W] = {};
  cholesky_lanes<S>(n, blocks, failed);
  if (interleaved == nullptr) {
    store_factor(lanes, diagonal, failed, out, first, count, n);
    return;
  }
  // Interleaved output: the chunk's lanes as they are (upper triangle zero).
  for (int64_t t = 0; t < W; ++t) {
    if (!failed[t]) continue;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j <= i; ++j)
        lanes[(i * n + j) * W + t] = i == j ? std::sqrt(std::max(diagonal[i * W + t], S(1e-12))) : S(0);
  }
  std::memcpy(interleaved, lanes, sizeof(S) * n * n * W);
}

// Forward (L y = b) and, unless kForwardOnly, backward (Lᵀ x = y) substitution
// on W interleaved systems with k right-hand sides, in place in X (n × k).
// Four source rows at a time, so each target row is loaded and stored once per
// four multiply-adds.
template <typename S, bool kForwardOnly>
void substitute_lanes(const typename Lanes<S>::Vector* L, typename Lanes<S>::Vector* X, int64_t n, int64_t k) {
  using V = typename Lanes<S>::Vector;
  for (int64_t i = 0; i < n; ++i) {
    V* xi = X + i * k;
    const V* li = L + i * n;
    int64_t j = 0;
    for (; j + 3 < i; j += 4) {
      const V l0 = li[j], l1 = li[j + 1], l2 = li[j + 2], l3 = li[j + 3];
      const V *x0 = X + j * k, *x1 = x0 + k, *x2 = x1 + k, *x3 = x2 + k;
      for (int64_t c = 0; c < k; ++c) xi[c] -= l0 * x0[c] + l1 * x1[c] + l2 * x2[c] + l3 * x3[c];
    }
    for (; j < i; ++j) {
      const V lij = li[j];
      const V* xj = X + j * k;
      for (int64_t c = 0; c < k; ++c) xi[c] -= lij * xj[c];
    }
    const V inverse = S(1) / li[i];
    for (int64_t c = 0; c < k; ++c) xi[c] *= inverse;
  }
  if (kForwardOnly) return;
  for (int64_t i = n - 1; i >= 0; --i) {
    V* xi = X + i * k;
    int64_t j = i + 1;
    for (; j + 3 < n; j += 4) {
      const V l0 = L[j * n + i], l1 = L[(j + 1) * n + i], l2 = L[(j + 2) * n + i], l3 = L[(j + 3) * n + i];
      const V *x0 = X + j * k, *x1 = x0 + k, *x2 = x1 + k, *x3 = x2 + k;
      for (int64_t c = 0; c < k; ++c) xi[c] -= l0 * x0[c] + l1 * x1[c] + l2 * x2[c] + l3 * x3[c];
    }
    for (; j < n; ++j) {
      const V lji = L[j * n + i];
      const V* xj = X + j * k;
      for (int64_t c = 0; c < k; ++c) xi[c] -= lji * xj[c];
    }
    const V inverse = S(1) / L[i * n + i];
    for (int64_t c = 0; c < k; ++c) xi[c] *= inverse;
  }
}

// Lower triangles of the factors of matrices [first, first + count) into lanes
// (identity factors in padding lanes; the upper triangle is not written).
template <typename S>
void load_factor_lanes(const S* factor, int64_t first, int64_t count, int64_t n, S* lanes) {
  constexpr int64_t W = Lanes<S>::kWidth;
  for (int64_t t = 0; t < W; ++t)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j <= i; ++j)
        lanes[(i * n + j) * W + t] = t < count ? factor[((first + t) * n + i) * n + j] : (i == j ? S(1) : S(0));
}

// Right-hand sides of matrices [first, first + count) into lanes (zero in padding lanes).
template <typename S>
void load_rhs_lanes(const S* rhs, int64_t first, int64_t count, int64_t n, int64_t k, S* lanes) {
  constexpr int64_t W = Lanes<S>::kWidth;
  for (int64_t t = 0; t < W; ++t) {
    const S* r = rhs + (first + t) * n * k;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < k; ++c) lanes[(i * k + c) * W + t] = t < count ? r[i * k + c] : S(0);
  }
}

template <typename S>
void store_solution_lanes(const S* lanes, int64_t first, int64_t count, int64_t n, int64_t k, S* out) {
  constexpr int64_t W = Lanes<S>::kWidth;
  for (int64_t t = 0; t < count; ++t) {
    S* o = out + (first + t) * n * k;
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < k; ++c) o[i * k + c] = lanes[(i * k + c) * W + t];
  }
}

// L Lᵀ x = b, or with kForwardOnly L y = b.
template <typename S, bool kForwardOnly>
void solve_chunk(const S* factor, const S* rhs, S* out, int64_t first, int64_t count, int64_t n, int64_t k) {
  using V = typename Lanes<S>::Vector;
  constexpr int64_t W = Lanes<S>::kWidth;
  std::unique_ptr<V[]> lower(new V[n * n]);
  std::unique_ptr<V[]> x(new V[n * k]);
  S* l = reinterpret_cast<S*>(lower.get());
  S* b = reinterpret_cast<S*>(x.get());
  load_factor_lanes(factor, first, count, n, l);
  load_rhs_lanes(rhs, first, count, n, k, b);
  substitute_lanes<S, kForwardOnly>(lower.get(), x.get(), n, k);
  store_solution_lanes(b, first, count, n, k, out);
}

// As solve_chunk, with the factors already interleaved (one chunk: n * n * W scalars).
template <typename S>
void solve_interleaved_chunk(const S* chunk, const S* rhs, S* out, int64_t first, int64_t count, int64_t n,
                             int64_t k) {
  using V = typename Lanes<S>::Vector;
  constexpr int64_t W = Lanes<S>::kWidth;
  std::unique_ptr<V[]> lower(new V[n * n]);
  std::unique_ptr<V[]> x(new V[n * k]);
  std::memcpy(lower.get(), chunk, sizeof(S) * n * n * W);
  S* b = reinterpret_cast<S*>(x.get());
  load_rhs_lanes(rhs, first, count, n, k, b);
  // Padding lanes hold identity factors (factor_gram writes them so).
  substitute_lanes<S, false>(lower.get(), x.get(), n, k);
  store_solution_lanes(b, first, count, n, k, out);
}

template <typename S>
void inverse_diagonal_chunk(const S* factor, S* out, int64_t first, int64_t count, int64_t n) {
  using V = typename Lanes<S>::Vector;
  constexpr int64_t W = Lanes<S>::kWidth;
  std::unique_ptr<V[]> lower(new V[n * n]);
  std::unique_ptr<V[]> inverse(new V[n * n]);
  S* l = reinterpret_cast<S*>(lower.get());
  load_factor_lanes(factor, first, count, n, l);
  const V* L = lower.get();
  V* Z = inverse.get();
  for (int64_t i = 0; i < n; ++i) {
    const V d = S(1) / L[i * n + i];
    for (int64_t j = 0; j < i; ++j) {
      V acc = V{};
      for (int64_t m = j; m < i; ++m) acc += L[i * n + m] * Z[m * n + j];
      Z[i * n + j] = -acc * d;
    }
    Z[i * n + i] = d;
  }
  for (int64_t j = 0; j < n; ++j) {
    V sum = V{};
    for (int64_t i = j; i < n; ++i) sum += Z[i * n + j] * Z[i * n + j];
    for (int64_t t = 0; t < count; ++t) out[(first + t) * n + j] = sum[t];
  }
}

template <ffi::DataType T>
ffi::Error factor_impl(ffi::ThreadPool pool, ffi::Buffer<T> blocks, ffi::Buffer<T> free,
                       ffi::ResultBuffer<T> factor) {
  using S = ffi::NativeType<T>;
  const auto dims = blocks.dimensions();
  if (dims.size() < 2 || dims[dims.size() - 1] != dims[dims.size() - 2])
    return ffi::Error::InvalidArgument("spd_factor: blocks must be (..., n, n)");
  const int64_t n = dims.back();
  const int64_t matrices = n ? blocks.element_count() / (n * n) : 0;
  if (free.element_count() != matrices * n)
    return ffi::Error::InvalidArgument("spd_factor: free must be (..., n)");
  const S* a = blocks.typed_data();
  const S* mask = free.typed_data();
  S* out = factor->typed_data();
  for_chunks(pool, matrices, Lanes<S>::kWidth,
             [&](int64_t first, int64_t count) { factor_chunk<S>(a, mask, out, first, count, n); });
  return ffi::Error::Success();
}

template <ffi::DataType T, bool kInterleaved>
ffi::Error factor_gram_impl(ffi::ThreadPool pool, ffi::Buffer<T> metric, ffi::Buffer<T> gram, ffi::Buffer<T> border,
                            ffi::Buffer<T> corner, ffi::Buffer<T> shift, ffi::Buffer<T> free,
                            ffi::ResultBuffer<T> factor) {
  using S = ffi::NativeType<T>;
  constexpr int64_t W = Lanes<S>::kWidth;
  const auto gram_dims = gram.dimensions();
  const auto border_dims = border.dimensions();
  if (gram_dims.size() < 3 || border_dims.size() < 2)
    return ffi::Error::InvalidArgument("spd_factor_gram: gram (..., 9, m, m) and border (..., p, m) expected");
  const int64_t m = gram_dims.back();
  const int64_t p = border_dims[border_dims.size() - 2];
  const int64_t n = m + p;
  const int64_t matrices = metric.element_count() / 9;
  const auto metric_dims = metric.dimensions();
  // Runs of consecutive matrices (the last axis before the 9 weights); each run
  // starts a new interleaved chunk. Runs share Gram matrices in groups
  // (vmapped videos carry their own Gram matrices).
  const int64_t per_run = metric_dims.size() >= 2 ? metric_dims[metric_dims.size() - 2] : matrices;
  const int64_t runs = per_run ? matrices / per_run : 0;
  const int64_t groups = m ? gram.element_count() / (9 * m * m) : 0;
  if (groups == 0 || runs % groups != 0 || border.element_count() != matrices * p * m ||
      corner.element_count() != matrices * p * p || shift.element_count() != matrices * n ||
      free.element_count() != matrices * n)
    return ffi::Error::InvalidArgument("spd_factor_gram: inconsistent shapes");
  const int64_t runs_per_group = runs / groups;
  const int64_t chunks = (per_run + W - 1) / W;
  if (kInterleaved && factor->element_count() != runs * chunks * n * n * W)
    return ffi::Error::InvalidArgument("spd_factor_gram: interleaved output must be (..., ceil(F / W), n, n, W)");
  const S* metric_data = metric.typed_data();
  const S* gram_data = gram.typed_data();
  const S* border_data = border.typed_data();
  const S* corner_data = corner.typed_data();
  const S* shift_data = shift.typed_data();
  const S* free_data = free.typed_data();
  S* out = factor->typed_data();
  for (int64_t r = 0; r < runs; ++r) {
    const int64_t offset = r * per_run;
    const S* run_gram = gram_data + (r / runs_per_group) * 9 * m * m;
    for_chunks(pool, per_run, W, [&](int64_t first, int64_t count) {
      const int64_t f = offset + first;
      S* interleaved = kInterleaved ? out + (r * chunks + first / W) * n * n * W : nullptr;
      factor_gram_chunk<S>(metric_data + f * 9, run_gram, border_data + f * p * m, corner_data + f * p * p,
                           shift_data + f * n, free_data + f * n, kInterleaved ? nullptr : out + f * n * n,
                           interleaved, 0, count, m, p);
    });
  }
  return ffi::Error::Success();
}

template <ffi::DataType T>
ffi::Error solve_interleaved_impl(ffi::ThreadPool pool, ffi::Buffer<T> factor, ffi::Buffer<T> rhs,
                                  ffi::ResultBuffer<T> solution) {
  using S = ffi::NativeType<T>;
  constexpr int64_t W = Lanes<S>::kWidth;
  const auto dims = factor.dimensions();
  const auto rhs_dims = rhs.dimensions();
  if (dims.size() < 4 || rhs_dims.size() < 3 || dims.back() != W)
    return ffi::Error::InvalidArgument("spd_solve_interleaved: factor (..., C, n, n, W) and rhs (..., F, n, k) expected");
  const int64_t n = dims[dims.size() - 2];
  const int64_t chunks = dims[dims.size() - 4];
  const int64_t frames = rhs_dims[rhs_dims.size() - 3];
  const int64_t k = rhs_dims.back();
  if (rhs_dims[rhs_dims.size() - 2] != n || chunks != (frames + W - 1) / W || frames == 0)
    return ffi::Error::InvalidArgument("spd_solve_interleaved: rhs does not match the factors");
  const int64_t groups = rhs.element_count() / (frames * n * k);
  if (factor.element_count() != groups * chunks * n * n * W)
    return ffi::Error::InvalidArgument("spd_solve_interleaved: batch of rhs and factors differ");
  const S* f = factor.typed_data();
  const S* b = rhs.typed_data();
  S* out = solution->typed_data();
  for (int64_t g = 0; g < groups; ++g) {
    for_chunks(pool, frames, W, [&](int64_t first, int64_t count) {
      solve_interleaved_chunk<S>(f + (g * chunks + first / W) * n * n * W, b + g * frames * n * k,
                                 out + g * frames * n * k, first, count, n, k);
    });
  }
  return ffi::Error::Success();
}

template <ffi::DataType T, bool kForwardOnly>
ffi::Error solve_impl(ffi::ThreadPool pool, ffi::Buffer<T> factor, ffi::Buffer<T> rhs,
                      ffi::ResultBuffer<T> solution) {
  using S = ffi::NativeType<T>;
  const auto dims = factor.dimensions();
  const auto rhs_dims = rhs.dimensions();
  if (dims.size() < 2 || rhs_dims.size() < 2)
    return ffi::Error::InvalidArgument("spd_solve: factor (..., n, n) and rhs (..., n, k) expected");
  const int64_t n = dims.back();
  const int64_t k = rhs_dims.back();
  const int64_t matrices = n ? factor.element_count() / (n * n) : 0;
  if (rhs_dims[rhs_dims.size() - 2] != n || rhs.element_count() != matrices * n * k)
    return ffi::Error::InvalidArgument("spd_solve: rhs must be (..., n, k) with the factor's batch");
  const S* f = factor.typed_data();
  const S* b = rhs.typed_data();
  S* out = solution->typed_data();
  for_chunks(pool, matrices, Lanes<S>::kWidth,
             [&](int64_t first, int64_t count) { solve_chunk<S, kForwardOnly>(f, b, out, first, count, n, k); });
  return ffi::Error::Success();
}

template <ffi::DataType T>
ffi::Error inverse_diagonal_impl(ffi::ThreadPool pool, ffi::Buffer<T> factor, ffi::ResultBuffer<T> diagonal) {
  using S = ffi::NativeType<T>;
  const auto dims = factor.dimensions();
  if (dims.size() < 2 || dims[dims.size() - 1] != dims[dims.size() - 2])
    return ffi::Error::InvalidArgument("spd_inverse_diagonal: factor must be (..., n, n)");
  const int64_t n = dims.back();
  const int64_t matrices = n ? factor.element_count() / (n * n) : 0;
  const S* f = factor.typed_data();
  S* out = diagonal->typed_data();
  for_chunks(pool, matrices, Lanes<S>::kWidth,
             [&](int64_t first, int64_t count) { inverse_diagonal_chunk<S>(f, out, first, count, n); });
  return ffi::Error::Success();
}

}  // namespace

#define DEEPEXP3D_DEFINE(NAME, IMPL, TYPE, BINDING) \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(NAME, IMPL<TYPE>, BINDING)

DEEPEXP3D_DEFINE(SpdFactorF32, factor_impl, ffi::F32,
                 ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
DEEPEXP3D_DEFINE(SpdFactorF64, factor_impl, ffi::F64,
                 ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F64>>().Arg<ffi::Buffer<ffi::F64>>().Ret<ffi::Buffer<ffi::F64>>());
#define DEEPEXP3D_SOLVE_BINDING(TYPE) \
  ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<TYPE>>().Arg<ffi::Buffer<TYPE>>().Ret<ffi::Buffer<TYPE>>()
XLA_FFI_DEFINE_HANDLER_SYMBOL(SpdSolveF32, (solve_impl<ffi::F32, false>), DEEPEXP3D_SOLVE_BINDING(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SpdSolveF64, (solve_impl<ffi::F64, false>), DEEPEXP3D_SOLVE_BINDING(ffi::F64));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SpdSolveLowerF32, (solve_impl<ffi::F32, true>), DEEPEXP3D_SOLVE_BINDING(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SpdSolveLowerF64, (solve_impl<ffi::F64, true>), DEEPEXP3D_SOLVE_BINDING(ffi::F64));
DEEPEXP3D_DEFINE(SpdSolveInterleavedF32, solve_interleaved_impl, ffi::F32,
                 ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
DEEPEXP3D_DEFINE(SpdSolveInterleavedF64, solve_interleaved_impl, ffi::F64,
                 ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F64>>().Arg<ffi::Buffer<ffi::F64>>().Ret<ffi::Buffer<ffi::F64>>());
DEEPEXP3D_DEFINE(SpdInverseDiagonalF32, inverse_diagonal_impl, ffi::F32,
                 ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F32>>().Ret<ffi::Buffer<ffi::F32>>());
DEEPEXP3D_DEFINE(SpdInverseDiagonalF64, inverse_diagonal_impl, ffi::F64,
                 ffi::Ffi::Bind().Ctx<ffi::ThreadPool>().Arg<ffi::Buffer<ffi::F64>>().Ret<ffi::Buffer<ffi::F64>>());
#define DEEPEXP3D_GRAM_BINDING(TYPE)                                                                    \
  ffi::Ffi::Bind()                                                                                      \
      .Ctx<ffi::ThreadPool>()                                                                           \
      .Arg<ffi::Buffer<TYPE>>()                                                                         \
      .Arg<ffi::Buffer<TYPE>>()                                                                         \
      .Arg<ffi::Buffer<TYPE>>()                                                                         \
      .Arg<ffi::Buffer<TYPE>>()                                                                         \
      .Arg<ffi::Buffer<TYPE>>()                                                                         \
      .Arg<ffi::Buffer<TYPE>>()                                                                         \
      .Ret<ffi::Buffer<TYPE>>()
XLA_FFI_DEFINE_HANDLER_SYMBOL(SpdFactorGramF32, (factor_gram_impl<ffi::F32, false>), DEEPEXP3D_GRAM_BINDING(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SpdFactorGramF64, (factor_gram_impl<ffi::F64, false>), DEEPEXP3D_GRAM_BINDING(ffi::F64));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SpdFactorGramInterleavedF32, (factor_gram_impl<ffi::F32, true>),
                              DEEPEXP3D_GRAM_BINDING(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SpdFactorGramInterleavedF64, (factor_gram_impl<ffi::F64, true>),
                              DEEPEXP3D_GRAM_BINDING(ffi::F64));
