// Fused CPU kernels for ACMR's transformer layer (forward and backward), built on first use by
// recbole_cmr/model/acmr_kernels.py. ACMR's layers are narrow (d = 32, 8 heads of width 4, rows of
// 10-50 positions): PyTorch spends a training step in many small memory-bound passes (attention
// maps, softmax, dropout masks, residuals, LayerNorm). Here each (row, head) attention is computed in
// cache, the attention map is never stored (backward recomputes it), and dropout + residual +
// LayerNorm and ReLU + dropout are one pass each. Dropout masks come from a counter-based hash of a
// seed drawn from torch's generator, so backward regenerates them instead of storing them.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kReductionChunks = 16;  // fixed, so parameter gradients do not depend on the thread count

inline uint64_t mix64(uint64_t z) {  // splitmix64's finaliser
  z += 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

// Dropout masks: element e of row r keeps when the top 16 bits of murmur3's 32-bit finaliser of
// (w + e * golden) ^ w' are >= threshold, where (w, w') is a 64-bit hash of (seed, r); so
// P(drop) = threshold / 65536 = p up to 2^-16, as in acmr.Dropout. The element loop is plain 32-bit
// integer arithmetic, which the compiler vectorises.
struct Mask {
  uint64_t seed;
  uint32_t threshold;
  bool active;
  Mask(double p, int64_t seed_in, bool training)
      : seed(static_cast<uint64_t>(seed_in)),
        threshold(static_cast<uint32_t>(std::lround(p * 65536.0))),
        active(training && p > 0) {}

  // out[e] = keep ? scale : 0 for the n elements of row `row`
  template <typename T>
  void fill(uint64_t row, int64_t n, T scale, T* out) const {
    if (!active) {
      std::fill(out, out + n, scale);
      return;
    }
    const uint64_t base = mix64(seed ^ (row * 0xD1B54A32D192ED03ULL));
    const uint32_t low = static_cast<uint32_t>(base), high = static_cast<uint32_t>(base >> 32);
    const uint32_t limit = threshold;
    for (int64_t e = 0; e < n; ++e) {
      uint32_t x = (low + static_cast<uint32_t>(e) * 0x9E3779B9u) ^ high;
      x ^= x >> 16;
      x *= 0x85EBCA6Bu;
      x ^= x >> 13;
      x *= 0xC2B2AE35u;
      x ^= x >> 16;
      out[e] = (x >> 16) >= limit ? scale : T(0);
    }
  }
};

// exp(x) for x <= 0 (softmax after subtracting the maximum), branch-free so loops over it vectorise:
// 2^k * 2^f with f in [-0.5, 0.5] and a degree-7 Taylor polynomial (relative error < 1e-8).
inline float exp_nonpositive(float x) {
  x = std::max(x, -87.0f);
  const float t = x * 1.4426950408889634f;
  const float k = (t + 12582912.0f) - 12582912.0f;  // round to nearest (|t| < 2^22) without a libm call
  const float f = (t - k) * 0.6931471805599453f;
  float p = 1.0f / 5040;
  p = p * f + 1.0f / 720;
  p = p * f + 1.0f / 120;
  p = p * f + 1.0f / 24;
  p = p * f + 1.0f / 6;
  p = p * f + 0.5f;
  p = p * f + 1.0f;
  p = p * f + 1.0f;
  const int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}
inline double exp_nonpositive(double x) { return std::exp(x); }

// Attention of one row b for all heads at once, heads innermost: with H = 8 every step below is one
// 8-lane vector operation. Scratch layout per position: [hd][H] (transposed from qkv's [H][hd]).
// HC, HDC: heads and head width known at compile time (0: given at run time), so the head loops
// become straight vector code for ACMR's usual shape (8 heads of width 4).
template <typename T, int HC, int HDC>
struct RowAttention {
  const int64_t N, H_run, hd_run;
  int64_t L;
  std::vector<T> q, k, v, s, m, mx, total;
  RowAttention(int64_t N_, int64_t H_, int64_t hd_)
      : N(N_), H_run(H_), hd_run(hd_), L(0), q(N_ * H_ * hd_), k(N_ * H_ * hd_), v(N_ * H_ * hd_), s(N_ * H_),
        m(N_ * H_), mx(H_), total(H_) {}

  void load(const T* __restrict__ qkv_row, int64_t length) {  // qkv_row: [N, 3, H, hd]
    const int64_t H = HC ? HC : H_run, hd = HDC ? HDC : hd_run, D = H * hd;
    L = length;
    T* __restrict__ qs = q.data();
    T* __restrict__ ks = k.data();
    T* __restrict__ vs = v.data();
    for (int64_t j = 0; j < N; ++j)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t c = 0; c < hd; ++c) {
          const T* src = qkv_row + j * 3 * D + h * hd + c;
          qs[(j * hd + c) * H + h] = src[0];
          ks[(j * hd + c) * H + h] = src[D];
          vs[(j * hd + c) * H + h] = src[2 * D];
        }
  }

  // s[j][h] = softmax_j(q_i . k_j / sqrt(hd)) over the L real keys
  void softmax(int64_t i) {
    const int64_t H = HC ? HC : H_run, hd = HDC ? HDC : hd_run, D = H * hd;
    const T scale = T(1) / std::sqrt(T(hd));
    const T* __restrict__ qi = q.data() + i * D;
    T* __restrict__ top = mx.data();
    T* __restrict__ sum = total.data();
    for (int64_t h = 0; h < H; ++h) top[h] = -std::numeric_limits<T>::infinity();
    for (int64_t j = 0; j < L; ++j) {
      T* __restrict__ sj = s.data() + j * H;
      const T* __restrict__ kj = k.data() + j * D;
      for (int64_t h = 0; h < H; ++h) sj[h] = 0;
      for (int64_t c = 0; c < hd; ++c)
        for (int64_t h = 0; h < H; ++h) sj[h] += qi[c * H + h] * kj[c * H + h];
      for (int64_t h = 0; h < H; ++h) {
        sj[h] *= scale;
        top[h] = std::max(top[h], sj[h]);
      }
    }
    for (int64_t h = 0; h < H; ++h) sum[h] = 0;
    for (int64_t j = 0; j < L; ++j) {
      T* __restrict__ sj = s.data() + j * H;
      for (int64_t h = 0; h < H; ++h) {
        sj[h] = exp_nonpositive(sj[h] - top[h]);
        sum[h] += sj[h];
      }
    }
    for (int64_t h = 0; h < H; ++h) sum[h] = T(1) / sum[h];
    for (int64_t j = 0; j < L; ++j) {
      T* __restrict__ sj = s.data() + j * H;
      for (int64_t h = 0; h < H; ++h) sj[h] *= sum[h];
    }
  }
};

template <typename T, int HC, int HDC>
void attention_forward_kernel(const T* qkv, const int64_t* lengths, T* out, int64_t B, int64_t N, int64_t H_,
                              int64_t hd_, double p, int64_t seed, bool training) {
  const Mask mask(p, seed, training);
  const T inv_keep = mask.active ? T(1) / T(1 - p) : T(1);
  const int64_t H = HC ? HC : H_, hd = HDC ? HDC : hd_, D = H * hd;
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    RowAttention<T, HC, HDC> row(N, H, hd);
    std::vector<T> o(D);
    for (int64_t b = begin; b < end; ++b) {
      row.load(qkv + b * N * 3 * D, lengths[b]);
      const int64_t L = row.L;
      for (int64_t i = 0; i < N; ++i) {
        row.softmax(i);
        mask.fill(static_cast<uint64_t>(b * N + i), L * H, inv_keep, row.m.data());
        T* __restrict__ acc = o.data();
        for (int64_t e = 0; e < D; ++e) acc[e] = 0;
        for (int64_t j = 0; j < L; ++j) {
          const T* __restrict__ sj = row.s.data() + j * H;
          const T* __restrict__ mj = row.m.data() + j * H;
          const T* __restrict__ vj = row.v.data() + j * D;
          for (int64_t c = 0; c < hd; ++c)
            for (int64_t h = 0; h < H; ++h) acc[c * H + h] += sj[h] * mj[h] * vj[c * H + h];
        }
        T* __restrict__ dst = out + (b * N + i) * D;
        for (int64_t h = 0; h < H; ++h)
          for (int64_t c = 0; c < hd; ++c) dst[h * hd + c] = acc[c * H + h];
      }
    }
  });
}

template <typename T, int HC, int HDC>
void attention_backward_kernel(const T* grad_out, const T* qkv, const int64_t* lengths, T* grad_qkv, int64_t B,
                               int64_t N, int64_t H_, int64_t hd_, double p, int64_t seed, bool training) {
  const Mask mask(p, seed, training);
  const T inv_keep = mask.active ? T(1) / T(1 - p) : T(1);
  const int64_t H = HC ? HC : H_, hd = HDC ? HDC : hd_, D = H * hd;
  const T scale = T(1) / std::sqrt(T(hd));
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    RowAttention<T, HC, HDC> row(N, H, hd);
    std::vector<T> go(D), dprob(N * H), weighted(H), dq(N * D), dk(N * D), dv(N * D);
    for (int64_t b = begin; b < end; ++b) {
      row.load(qkv + b * N * 3 * D, lengths[b]);
      const int64_t L = row.L;
      std::fill(dq.begin(), dq.end(), T(0));
      std::fill(dk.begin(), dk.end(), T(0));
      std::fill(dv.begin(), dv.end(), T(0));
      for (int64_t i = 0; i < N; ++i) {
        row.softmax(i);
        mask.fill(static_cast<uint64_t>(b * N + i), L * H, inv_keep, row.m.data());
        const T* __restrict__ src = grad_out + (b * N + i) * D;
        T* __restrict__ gi = go.data();
        T* __restrict__ wsum = weighted.data();
        for (int64_t h = 0; h < H; ++h)
          for (int64_t c = 0; c < hd; ++c) gi[c * H + h] = src[h * hd + c];
        for (int64_t h = 0; h < H; ++h) wsum[h] = 0;
        for (int64_t j = 0; j < L; ++j) {
          const T* __restrict__ sj = row.s.data() + j * H;
          const T* __restrict__ mj = row.m.data() + j * H;
          const T* __restrict__ vj = row.v.data() + j * D;
          T* __restrict__ dvj = dv.data() + j * D;
          T* __restrict__ dpj = dprob.data() + j * H;
          for (int64_t h = 0; h < H; ++h) dpj[h] = 0;
          for (int64_t c = 0; c < hd; ++c)
            for (int64_t h = 0; h < H; ++h) {
              dpj[h] += gi[c * H + h] * vj[c * H + h];
              dvj[c * H + h] += sj[h] * mj[h] * gi[c * H + h];
            }
          for (int64_t h = 0; h < H; ++h) {
            dpj[h] *= mj[h];
            wsum[h] += sj[h] * dpj[h];
          }
        }
        const T* __restrict__ qi = row.q.data() + i * D;
        T* __restrict__ dqi = dq.data() + i * D;
        for (int64_t j = 0; j < L; ++j) {
          const T* __restrict__ sj = row.s.data() + j * H;
          T* __restrict__ dpj = dprob.data() + j * H;
          for (int64_t h = 0; h < H; ++h) dpj[h] = sj[h] * (dpj[h] - wsum[h]) * scale;  // dS
          const T* __restrict__ kj = row.k.data() + j * D;
          T* __restrict__ dkj = dk.data() + j * D;
          for (int64_t c = 0; c < hd; ++c)
            for (int64_t h = 0; h < H; ++h) {
              dqi[c * H + h] += dpj[h] * kj[c * H + h];
              dkj[c * H + h] += dpj[h] * qi[c * H + h];
            }
        }
      }
      T* dst = grad_qkv + b * N * 3 * D;
      for (int64_t j = 0; j < N; ++j)
        for (int64_t h = 0; h < H; ++h)
          for (int64_t c = 0; c < hd; ++c) {
            T* out = dst + j * 3 * D + h * hd + c;
            out[0] = dq[(j * hd + c) * H + h];
            out[D] = dk[(j * hd + c) * H + h];
            out[2 * D] = dv[(j * hd + c) * H + h];
          }
    }
  });
}

template <typename T>
void residual_norm_forward_kernel(const T* x, const T* z, const T* gamma, const T* beta, T* y, T* xhat, T* rstd,
                                  int64_t M, int64_t D, double p, int64_t seed, bool training, double eps) {
  const Mask mask(p, seed, training);
  const T inv_keep = mask.active ? T(1) / T(1 - p) : T(1);
  at::parallel_for(0, M, 64, [&](int64_t begin, int64_t end) {
    std::vector<T> r(D), keep(D);
    for (int64_t m = begin; m < end; ++m) {
      mask.fill(static_cast<uint64_t>(m), D, inv_keep, keep.data());
      T mean = 0;
      for (int64_t c = 0; c < D; ++c) {
        const int64_t e = m * D + c;
        r[c] = x[e] + z[e] * keep[c];
        mean += r[c];
      }
      mean /= T(D);
      T var = 0;
      for (int64_t c = 0; c < D; ++c) var += (r[c] - mean) * (r[c] - mean);
      const T inv_std = T(1) / std::sqrt(var / T(D) + T(eps));
      rstd[m] = inv_std;
      for (int64_t c = 0; c < D; ++c) {
        const T n = (r[c] - mean) * inv_std;
        xhat[m * D + c] = n;
        y[m * D + c] = n * gamma[c] + beta[c];
      }
    }
  });
}

template <typename T>
void residual_norm_backward_kernel(const T* dy, const T* xhat, const T* rstd, const T* gamma, T* dx, T* dz,
                                   T* dgamma, T* dbeta, int64_t M, int64_t D, double p, int64_t seed,
                                   bool training) {
  const Mask mask(p, seed, training);
  const T inv_keep = mask.active ? T(1) / T(1 - p) : T(1);
  std::vector<T> partial_gamma(kReductionChunks * D, T(0)), partial_beta(kReductionChunks * D, T(0));
  at::parallel_for(0, kReductionChunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    std::vector<T> dn(D), keep(D);
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      T* pg = partial_gamma.data() + chunk * D;
      T* pb = partial_beta.data() + chunk * D;
      for (int64_t m = chunk * M / kReductionChunks; m < (chunk + 1) * M / kReductionChunks; ++m) {
        T mean_dn = 0, mean_dn_n = 0;
        for (int64_t c = 0; c < D; ++c) {
          const int64_t e = m * D + c;
          pg[c] += dy[e] * xhat[e];
          pb[c] += dy[e];
          dn[c] = dy[e] * gamma[c];
          mean_dn += dn[c];
          mean_dn_n += dn[c] * xhat[e];
        }
        mean_dn /= T(D);
        mean_dn_n /= T(D);
        mask.fill(static_cast<uint64_t>(m), D, inv_keep, keep.data());
        for (int64_t c = 0; c < D; ++c) {
          const int64_t e = m * D + c;
          const T dr = rstd[m] * (dn[c] - mean_dn - xhat[e] * mean_dn_n);
          dx[e] = dr;
          dz[e] = dr * keep[c];
        }
      }
    }
  });
  for (int64_t c = 0; c < D; ++c) {
    T g = 0, b = 0;
    for (int64_t chunk = 0; chunk < kReductionChunks; ++chunk) {
      g += partial_gamma[chunk * D + c];
      b += partial_beta[chunk * D + c];
    }
    dgamma[c] = g;
    dbeta[c] = b;
  }
}

template <typename T>
void relu_dropout_forward_kernel(const T* a, T* h, int64_t rows, int64_t width, double p, int64_t seed,
                                 bool training) {
  const Mask mask(p, seed, training);
  const T inv_keep = mask.active ? T(1) / T(1 - p) : T(1);
  at::parallel_for(0, rows, 64, [&](int64_t begin, int64_t end) {
    std::vector<T> keep(width);
    for (int64_t r = begin; r < end; ++r) {
      mask.fill(static_cast<uint64_t>(r), width, inv_keep, keep.data());
      const T* ar = a + r * width;
      T* hr = h + r * width;
      for (int64_t c = 0; c < width; ++c) hr[c] = std::max(ar[c], T(0)) * keep[c];
    }
  });
}

template <typename T>
void relu_dropout_backward_kernel(const T* grad, const T* h, T* out, int64_t n, T scale) {
  at::parallel_for(0, n, 16384, [&](int64_t begin, int64_t end) {
    for (int64_t e = begin; e < end; ++e) out[e] = grad[e] * (scale * static_cast<T>(h[e] > 0));  // branch-free
  });
}

void check(const torch::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), name, " must be a contiguous CPU tensor");
}

}  // namespace

#ifdef __AVX2__
#include <immintrin.h>

// ACMR's usual shape, 8 heads of width 4, in AVX2: one 8-lane vector holds one value of every head,
// so a position's q (or k, v) is 4 vectors. Same arithmetic and masks as the generic kernels.
namespace avx2 {

inline __m256 exp_nonpositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 t = _mm256_mul_ps(x, _mm256_set1_ps(1.4426950408889634f));
  const __m256 k = _mm256_round_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m256 f = _mm256_mul_ps(_mm256_sub_ps(t, k), _mm256_set1_ps(0.6931471805599453f));
  __m256 p = _mm256_set1_ps(1.0f / 5040);
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 720));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 120));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 24));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f / 6));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  p = _mm256_fmadd_ps(p, f, _mm256_set1_ps(1.0f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

// The 8 mask values of elements j * 8 + h (h = 0..7) of one row, as Mask::fill computes them.
struct RowMask {
  __m256i low, high, threshold;
  __m256 scale;
  bool active;
  RowMask(const Mask& mask, uint64_t row, float scale_in) : active(mask.active) {
    scale = _mm256_set1_ps(scale_in);
    if (!active) return;
    const uint64_t base = mix64(mask.seed ^ (row * 0xD1B54A32D192ED03ULL));
    low = _mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(base)));
    high = _mm256_set1_epi32(static_cast<int32_t>(static_cast<uint32_t>(base >> 32)));
    threshold = _mm256_set1_epi32(static_cast<int32_t>(mask.threshold) - 1);
  }
  inline __m256 at(int64_t j) const {
    if (!active) return scale;
    const __m256i e = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(j * 8)),
                                       _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i x = _mm256_xor_si256(_mm256_add_epi32(low, _mm256_mullo_epi32(e, _mm256_set1_epi32(0x9E3779B9u))), high);
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32(0x85EBCA6Bu));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 13));
    x = _mm256_mullo_epi32(x, _mm256_set1_epi32(0xC2B2AE35u));
    x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
    const __m256i kept = _mm256_cmpgt_epi32(_mm256_srli_epi32(x, 16), threshold);
    return _mm256_and_ps(_mm256_castsi256_ps(kept), scale);
  }
};

struct Row {  // one row's q, k, v as [position][c] vectors of 8 heads
  int64_t N, L;
  std::vector<__m256> q, k, v, p, dp;
  explicit Row(int64_t N_) : N(N_), L(0), q(N_ * 4), k(N_ * 4), v(N_ * 4), p(N_), dp(N_) {}
  void load(const float* qkv_row, int64_t length) {
    L = length;
    alignas(32) float buffer[3][4][8];
    for (int64_t j = 0; j < N; ++j) {
      const float* src = qkv_row + j * 96;
      for (int part = 0; part < 3; ++part)
        for (int h = 0; h < 8; ++h)
          for (int c = 0; c < 4; ++c) buffer[part][c][h] = src[part * 32 + h * 4 + c];
      for (int c = 0; c < 4; ++c) {
        q[j * 4 + c] = _mm256_load_ps(buffer[0][c]);
        k[j * 4 + c] = _mm256_load_ps(buffer[1][c]);
        v[j * 4 + c] = _mm256_load_ps(buffer[2][c]);
      }
    }
  }
  // p[j] = softmax over the L real keys of q_i . k_j / 2 (sqrt of the head width 4)
  void softmax(int64_t i) {
    const __m256* qi = &q[i * 4];
    __m256 top = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t j = 0; j < L; ++j) {
      const __m256* kj = &k[j * 4];
      __m256 dot = _mm256_mul_ps(qi[0], kj[0]);
      dot = _mm256_fmadd_ps(qi[1], kj[1], dot);
      dot = _mm256_fmadd_ps(qi[2], kj[2], dot);
      dot = _mm256_fmadd_ps(qi[3], kj[3], dot);
      p[j] = _mm256_mul_ps(dot, _mm256_set1_ps(0.5f));
      top = _mm256_max_ps(top, p[j]);
    }
    __m256 total = _mm256_setzero_ps();
    for (int64_t j = 0; j < L; ++j) {
      p[j] = exp_nonpositive(_mm256_sub_ps(p[j], top));
      total = _mm256_add_ps(total, p[j]);
    }
    const __m256 inv = _mm256_div_ps(_mm256_set1_ps(1.0f), total);
    for (int64_t j = 0; j < L; ++j) p[j] = _mm256_mul_ps(p[j], inv);
  }
};

inline void store_transposed(const __m256* values, float* dst) {  // [c][h] vectors -> dst[h * 4 + c]
  alignas(32) float buffer[4][8];
  for (int c = 0; c < 4; ++c) _mm256_store_ps(buffer[c], values[c]);
  for (int h = 0; h < 8; ++h)
    for (int c = 0; c < 4; ++c) dst[h * 4 + c] = buffer[c][h];
}

inline void load_transposed(const float* src, __m256* values) {  // src[h * 4 + c] -> [c][h] vectors
  alignas(32) float buffer[4][8];
  for (int h = 0; h < 8; ++h)
    for (int c = 0; c < 4; ++c) buffer[c][h] = src[h * 4 + c];
  for (int c = 0; c < 4; ++c) values[c] = _mm256_load_ps(buffer[c]);
}

void attention_forward(const float* qkv, const int64_t* lengths, float* out, int64_t B, int64_t N, double p_drop,
                       int64_t seed, bool training) {
  const Mask mask(p_drop, seed, training);
  const float inv_keep = mask.active ? 1.0f / static_cast<float>(1 - p_drop) : 1.0f;
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    Row row(N);
    for (int64_t b = begin; b < end; ++b) {
      row.load(qkv + b * N * 96, lengths[b]);
      for (int64_t i = 0; i < N; ++i) {
        row.softmax(i);
        const RowMask keep(mask, static_cast<uint64_t>(b * N + i), inv_keep);
        __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
        for (int64_t j = 0; j < row.L; ++j) {
          const __m256 w = _mm256_mul_ps(row.p[j], keep.at(j));
          for (int c = 0; c < 4; ++c) acc[c] = _mm256_fmadd_ps(w, row.v[j * 4 + c], acc[c]);
        }
        store_transposed(acc, out + (b * N + i) * 32);
      }
    }
  });
}

void attention_backward(const float* grad_out, const float* qkv, const int64_t* lengths, float* grad_qkv, int64_t B,
                        int64_t N, double p_drop, int64_t seed, bool training) {
  const Mask mask(p_drop, seed, training);
  const float inv_keep = mask.active ? 1.0f / static_cast<float>(1 - p_drop) : 1.0f;
  const __m256 half = _mm256_set1_ps(0.5f);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    Row row(N);
    std::vector<__m256> dq(N * 4), dk(N * 4), dv(N * 4);
    for (int64_t b = begin; b < end; ++b) {
      row.load(qkv + b * N * 96, lengths[b]);
      const int64_t L = row.L;
      std::fill(dq.begin(), dq.end(), _mm256_setzero_ps());
      std::fill(dk.begin(), dk.end(), _mm256_setzero_ps());
      std::fill(dv.begin(), dv.end(), _mm256_setzero_ps());
      for (int64_t i = 0; i < N; ++i) {
        row.softmax(i);
        const RowMask keep(mask, static_cast<uint64_t>(b * N + i), inv_keep);
        __m256 g[4];
        load_transposed(grad_out + (b * N + i) * 32, g);
        __m256 weighted = _mm256_setzero_ps();
        for (int64_t j = 0; j < L; ++j) {
          const __m256 m = keep.at(j);
          const __m256 pm = _mm256_mul_ps(row.p[j], m);
          const __m256* vj = &row.v[j * 4];
          __m256 dot = _mm256_mul_ps(g[0], vj[0]);
          for (int c = 1; c < 4; ++c) dot = _mm256_fmadd_ps(g[c], vj[c], dot);
          for (int c = 0; c < 4; ++c) dv[j * 4 + c] = _mm256_fmadd_ps(pm, g[c], dv[j * 4 + c]);
          row.dp[j] = _mm256_mul_ps(dot, m);
          weighted = _mm256_fmadd_ps(row.p[j], row.dp[j], weighted);
        }
        const __m256* qi = &row.q[i * 4];
        for (int64_t j = 0; j < L; ++j) {
          const __m256 ds = _mm256_mul_ps(_mm256_mul_ps(row.p[j], _mm256_sub_ps(row.dp[j], weighted)), half);
          const __m256* kj = &row.k[j * 4];
          for (int c = 0; c < 4; ++c) {
            dq[i * 4 + c] = _mm256_fmadd_ps(ds, kj[c], dq[i * 4 + c]);
            dk[j * 4 + c] = _mm256_fmadd_ps(ds, qi[c], dk[j * 4 + c]);
          }
        }
      }
      for (int64_t j = 0; j < N; ++j) {
        float* dst = grad_qkv + (b * N + j) * 96;
        store_transposed(&dq[j * 4], dst);
        store_transposed(&dk[j * 4], dst + 32);
        store_transposed(&dv[j * 4], dst + 64);
      }
    }
  });
}

inline float horizontal_sum(__m256 v) {
  const __m128 pair = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 quad = _mm_add_ps(pair, _mm_movehl_ps(pair, pair));
  return _mm_cvtss_f32(_mm_add_ss(quad, _mm_shuffle_ps(quad, quad, 1)));
}

// LayerNorm(x + dropout(z)) over rows of width 32 (ACMR's d): a row is 4 vectors.
void residual_norm_forward(const float* x, const float* z, const float* gamma, const float* beta, float* y,
                           float* xhat, float* rstd, int64_t M, double p, int64_t seed, bool training, double eps) {
  const Mask mask(p, seed, training);
  const float inv_keep = mask.active ? 1.0f / static_cast<float>(1 - p) : 1.0f;
  at::parallel_for(0, M, 64, [&](int64_t begin, int64_t end) {
    alignas(32) float keep[32];
    for (int64_t m = begin; m < end; ++m) {
      mask.fill(static_cast<uint64_t>(m), 32, inv_keep, keep);
      __m256 r[4], sum = _mm256_setzero_ps();
      for (int c = 0; c < 4; ++c) {
        r[c] = _mm256_fmadd_ps(_mm256_loadu_ps(z + m * 32 + c * 8), _mm256_load_ps(keep + c * 8),
                               _mm256_loadu_ps(x + m * 32 + c * 8));
        sum = _mm256_add_ps(sum, r[c]);
      }
      const __m256 mean = _mm256_set1_ps(horizontal_sum(sum) / 32.0f);
      __m256 squares = _mm256_setzero_ps();
      for (int c = 0; c < 4; ++c) {
        r[c] = _mm256_sub_ps(r[c], mean);
        squares = _mm256_fmadd_ps(r[c], r[c], squares);
      }
      const float inv_std = 1.0f / std::sqrt(horizontal_sum(squares) / 32.0f + static_cast<float>(eps));
      rstd[m] = inv_std;
      const __m256 scale = _mm256_set1_ps(inv_std);
      for (int c = 0; c < 4; ++c) {
        const __m256 n = _mm256_mul_ps(r[c], scale);
        _mm256_storeu_ps(xhat + m * 32 + c * 8, n);
        _mm256_storeu_ps(y + m * 32 + c * 8,
                         _mm256_fmadd_ps(n, _mm256_loadu_ps(gamma + c * 8), _mm256_loadu_ps(beta + c * 8)));
      }
    }
  });
}

void residual_norm_backward(const float* dy, const float* xhat, const float* rstd, const float* gamma, float* dx,
                            float* dz, float* dgamma, float* dbeta, int64_t M, double p, int64_t seed,
                            bool training) {
  const Mask mask(p, seed, training);
  const float inv_keep = mask.active ? 1.0f / static_cast<float>(1 - p) : 1.0f;
  std::vector<float> partial(kReductionChunks * 64, 0.0f);  // per chunk: dgamma[32], dbeta[32]
  at::parallel_for(0, kReductionChunks, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    alignas(32) float keep[32];
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      __m256 pg[4], pb[4];
      for (int c = 0; c < 4; ++c) pg[c] = pb[c] = _mm256_setzero_ps();
      for (int64_t m = chunk * M / kReductionChunks; m < (chunk + 1) * M / kReductionChunks; ++m) {
        __m256 g[4], n[4], dn[4], sum_dn = _mm256_setzero_ps(), sum_dn_n = _mm256_setzero_ps();
        for (int c = 0; c < 4; ++c) {
          g[c] = _mm256_loadu_ps(dy + m * 32 + c * 8);
          n[c] = _mm256_loadu_ps(xhat + m * 32 + c * 8);
          pg[c] = _mm256_fmadd_ps(g[c], n[c], pg[c]);
          pb[c] = _mm256_add_ps(pb[c], g[c]);
          dn[c] = _mm256_mul_ps(g[c], _mm256_loadu_ps(gamma + c * 8));
          sum_dn = _mm256_add_ps(sum_dn, dn[c]);
          sum_dn_n = _mm256_fmadd_ps(dn[c], n[c], sum_dn_n);
        }
        const __m256 mean_dn = _mm256_set1_ps(horizontal_sum(sum_dn) / 32.0f);
        const __m256 mean_dn_n = _mm256_set1_ps(horizontal_sum(sum_dn_n) / 32.0f);
        const __m256 scale = _mm256_set1_ps(rstd[m]);
        mask.fill(static_cast<uint64_t>(m), 32, inv_keep, keep);
        for (int c = 0; c < 4; ++c) {
          const __m256 dr = _mm256_mul_ps(scale, _mm256_sub_ps(_mm256_sub_ps(dn[c], mean_dn),
                                                               _mm256_mul_ps(n[c], mean_dn_n)));
          _mm256_storeu_ps(dx + m * 32 + c * 8, dr);
          _mm256_storeu_ps(dz + m * 32 + c * 8, _mm256_mul_ps(dr, _mm256_load_ps(keep + c * 8)));
        }
      }
      for (int c = 0; c < 4; ++c) {
        _mm256_storeu_ps(&partial[chunk * 64 + c * 8], pg[c]);
        _mm256_storeu_ps(&partial[chunk * 64 + 32 + c * 8], pb[c]);
      }
    }
  });
  for (int c = 0; c < 32; ++c) {
    float g = 0, b = 0;
    for (int64_t chunk = 0; chunk < kReductionChunks; ++chunk) {
      g += partial[chunk * 64 + c];
      b += partial[chunk * 64 + 32 + c];
    }
    dgamma[c] = g;
    dbeta[c] = b;
  }
}

}  // namespace avx2
#endif

torch::Tensor attention_forward(torch::Tensor qkv, torch::Tensor lengths, int64_t n_heads, double p, int64_t seed,
                                bool training) {
  check(qkv, "qkv");
  check(lengths, "lengths");
  const int64_t B = qkv.size(0), N = qkv.size(1), D = qkv.size(2) / 3, hd = D / n_heads;
  auto out = torch::empty({B, N, D}, qkv.options());
#ifdef __AVX2__
  if (qkv.scalar_type() == torch::kFloat && n_heads == 8 && hd == 4) {
    avx2::attention_forward(qkv.data_ptr<float>(), lengths.data_ptr<int64_t>(), out.data_ptr<float>(), B, N, p, seed,
                            training);
    return out;
  }
#endif
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "attention_forward", [&] {
    auto kernel = n_heads == 8 && hd == 4 ? attention_forward_kernel<scalar_t, 8, 4>
                                          : attention_forward_kernel<scalar_t, 0, 0>;
    kernel(qkv.data_ptr<scalar_t>(), lengths.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), B, N, n_heads, hd, p,
           seed, training);
  });
  return out;
}

torch::Tensor attention_backward(torch::Tensor grad_out, torch::Tensor qkv, torch::Tensor lengths, int64_t n_heads,
                                 double p, int64_t seed, bool training) {
  check(grad_out, "grad_out");
  check(qkv, "qkv");
  const int64_t B = qkv.size(0), N = qkv.size(1), D = qkv.size(2) / 3, hd = D / n_heads;
  auto grad_qkv = torch::empty_like(qkv);
#ifdef __AVX2__
  if (qkv.scalar_type() == torch::kFloat && n_heads == 8 && hd == 4) {
    avx2::attention_backward(grad_out.data_ptr<float>(), qkv.data_ptr<float>(), lengths.data_ptr<int64_t>(),
                             grad_qkv.data_ptr<float>(), B, N, p, seed, training);
    return grad_qkv;
  }
#endif
  AT_DISPATCH_FLOATING_TYPES(qkv.scalar_type(), "attention_backward", [&] {
    auto kernel = n_heads == 8 && hd == 4 ? attention_backward_kernel<scalar_t, 8, 4>
                                          : attention_backward_kernel<scalar_t, 0, 0>;
    kernel(grad_out.data_ptr<scalar_t>(), qkv.data_ptr<scalar_t>(), lengths.data_ptr<int64_t>(),
           grad_qkv.data_ptr<scalar_t>(), B, N, n_heads, hd, p, seed, training);
  });
  return grad_qkv;
}

std::vector<torch::Tensor> residual_norm_forward(torch::Tensor x, torch::Tensor z, torch::Tensor gamma,
                                                 torch::Tensor beta, double p, int64_t seed, bool training,
                                                 double eps) {
  check(x, "x");
  check(z, "z");
  const int64_t D = x.size(-1), M = x.numel() / D;
  auto y = torch::empty_like(x), xhat = torch::empty_like(x);
  auto rstd = torch::empty({M}, x.options());
#ifdef __AVX2__
  if (x.scalar_type() == torch::kFloat && D == 32) {
    avx2::residual_norm_forward(x.data_ptr<float>(), z.data_ptr<float>(), gamma.contiguous().data_ptr<float>(),
                                beta.contiguous().data_ptr<float>(), y.data_ptr<float>(), xhat.data_ptr<float>(),
                                rstd.data_ptr<float>(), M, p, seed, training, eps);
    return {y, xhat, rstd};
  }
#endif
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "residual_norm_forward", [&] {
    residual_norm_forward_kernel<scalar_t>(x.data_ptr<scalar_t>(), z.data_ptr<scalar_t>(),
                                           gamma.contiguous().data_ptr<scalar_t>(),
                                           beta.contiguous().data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                           xhat.data_ptr<scalar_t>(), rstd.data_ptr<scalar_t>(), M, D, p, seed,
                                           training, eps);
  });
  return {y, xhat, rstd};
}

std::vector<torch::Tensor> residual_norm_backward(torch::Tensor dy, torch::Tensor xhat, torch::Tensor rstd,
                                                  torch::Tensor gamma, double p, int64_t seed, bool training) {
  check(dy, "dy");
  const int64_t D = dy.size(-1), M = dy.numel() / D;
  auto dx = torch::empty_like(dy), dz = torch::empty_like(dy);
  auto dgamma = torch::empty({D}, dy.options()), dbeta = torch::empty({D}, dy.options());
#ifdef __AVX2__
  if (dy.scalar_type() == torch::kFloat && D == 32) {
    avx2::residual_norm_backward(dy.data_ptr<float>(), xhat.data_ptr<float>(), rstd.data_ptr<float>(),
                                 gamma.contiguous().data_ptr<float>(), dx.data_ptr<float>(), dz.data_ptr<float>(),
                                 dgamma.data_ptr<float>(), dbeta.data_ptr<float>(), M, p, seed, training);
    return {dx, dz, dgamma, dbeta};
  }
#endif
  AT_DISPATCH_FLOATING_TYPES(dy.scalar_type(), "residual_norm_backward", [&] {
    residual_norm_backward_kernel<scalar_t>(dy.data_ptr<scalar_t>(), xhat.data_ptr<scalar_t>(),
                                            rstd.data_ptr<scalar_t>(), gamma.contiguous().data_ptr<scalar_t>(),
                                            dx.data_ptr<scalar_t>(), dz.data_ptr<scalar_t>(),
                                            dgamma.data_ptr<scalar_t>(), dbeta.data_ptr<scalar_t>(), M, D, p, seed,
                                            training);
  });
  return {dx, dz, dgamma, dbeta};
}

torch::Tensor relu_dropout_forward(torch::Tensor a, double p, int64_t seed, bool training) {
  check(a, "a");
  auto h = torch::empty_like(a);
  AT_DISPATCH_FLOATING_TYPES(a.scalar_type(), "relu_dropout_forward", [&] {
    relu_dropout_forward_kernel<scalar_t>(a.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), a.numel() / a.size(-1),
                                          a.size(-1), p, seed, training);
  });
  return h;
}

torch::Tensor relu_dropout_backward(torch::Tensor grad, torch::Tensor h, double scale) {
  check(grad, "grad");
  check(h, "h");
  auto out = torch::empty_like(grad);
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "relu_dropout_backward", [&] {
    relu_dropout_backward_kernel<scalar_t>(grad.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                                           out.data_ptr<scalar_t>(), grad.numel(), static_cast<scalar_t>(scale));
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("attention_forward", &attention_forward, "softmax(q k^T / sqrt(hd)) with dropout, times v");
  m.def("attention_backward", &attention_backward, "gradient of attention_forward with respect to qkv");
  m.def("residual_norm_forward", &residual_norm_forward, "LayerNorm(x + dropout(z))");
  m.def("residual_norm_backward", &residual_norm_backward, "gradients of residual_norm_forward");
  m.def("relu_dropout_forward", &relu_dropout_forward, "dropout(relu(a))");
  m.def("relu_dropout_backward", &relu_dropout_backward, "gradient of relu_dropout_forward from its output");
}
