// A JAX FFI custom call into oneDNN's matmul, for bf16 matrix products on CPUs that have bf16
// hardware (AVX512-BF16, AMX-BF16): oneDNN picks the best kernel for the CPU it runs on, where
// XLA:CPU's own bf16 dot is slower than its fp32 one. lm/kernels.py calls it (impl "onednn").
//
//   C[..., M, N] = A[..., M, K] @ B[..., K, N]   (the same leading batch dims, or none)
//
// Each operand is described by its logical dims and element strides (attributes), so a transposed
// or head-major view of a stored buffer is read and written in place: attention's
// [B, T, heads, H] activations are multiplied per (batch, head) without a copy. A, B: bf16 or f32
// (the same); C: bf16 or f32; accumulation in f32.
//
// Built by lm/cpu/__init__.py against jaxlib's FFI headers and the onednn-cpu-gomp wheel.

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include <omp.h>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using dims = dnnl::memory::dims;

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

bool Dtype(ffi::DataType t, dnnl::memory::data_type* out) {
  switch (t) {
    case ffi::DataType::BF16: *out = dnnl::memory::data_type::bf16; return true;
    case ffi::DataType::F32: *out = dnnl::memory::data_type::f32; return true;
    default: return false;
  }
}

// One compiled primitive per (dims, strides, dtypes): a decode step calls the same few shapes
// thousands of times, and building a primitive descriptor costs more than a small matmul.
struct Cached {
  dnnl::matmul prim;
  dnnl::memory a, b, c;
};

// Products below this many multiply-adds run on the calling thread alone: oneDNN's split over
// OpenMP threads costs more than it saves at that size, and it holds the other cores while XLA
// has independent work for them (the main job's matmuls, 6-50M each: 23.1 -> 20.2 ms a step on
// a 2-core AMX host, docs/performance.md). LM_ONEDNN_SERIAL_MACS overrides it (0: never serial).
int64_t SerialMacs() {
  static const int64_t v = [] {
    const char* e = std::getenv("LM_ONEDNN_SERIAL_MACS");
    return e ? std::atoll(e) : (int64_t{1} << 26);
  }();
  return v;
}

// omp_set_num_threads for this thread while in scope (an ICV of the calling thread only).
struct OmpThreads {
  int before;
  explicit OmpThreads(int n) : before(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~OmpThreads() { omp_set_num_threads(before); }
};

void AppendKey(std::string* key, ffi::Span<const int64_t> v) {
  for (int64_t x : v) { key->append(std::to_string(x)); key->push_back(','); }
  key->push_back(';');
}

// The largest element offset a (dims, strides) view reaches, + 1.
int64_t Extent(ffi::Span<const int64_t> d, ffi::Span<const int64_t> s) {
  int64_t e = 1;
  for (size_t i = 0; i < d.size(); ++i) {
    if (d[i] <= 0) return 0;
    e += (d[i] - 1) * s[i];
  }
  return e;
}

ffi::Error Matmul(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> c,
                  ffi::Span<const int64_t> a_dims, ffi::Span<const int64_t> a_strides,
                  ffi::Span<const int64_t> b_dims, ffi::Span<const int64_t> b_strides,
                  ffi::Span<const int64_t> c_dims, ffi::Span<const int64_t> c_strides) {
  const size_t r = a_dims.size();
  if (r < 2 || b_dims.size() != r || c_dims.size() != r || a_strides.size() != r ||
      b_strides.size() != r || c_strides.size() != r)
    return ffi::Error::InvalidArgument("onednn_matmul: operands of different ranks");
  for (size_t i = 0; i + 2 < r; ++i)
    if (a_dims[i] != b_dims[i] || a_dims[i] != c_dims[i])
      return ffi::Error::InvalidArgument("onednn_matmul: batch dims do not match");
  if (a_dims[r - 1] != b_dims[r - 2] || c_dims[r - 2] != a_dims[r - 2] ||
      c_dims[r - 1] != b_dims[r - 1])
    return ffi::Error::InvalidArgument("onednn_matmul: shapes do not match");
  if (Extent(a_dims, a_strides) > static_cast<int64_t>(a.element_count()) ||
      Extent(b_dims, b_strides) > static_cast<int64_t>(b.element_count()) ||
      Extent(c_dims, c_strides) > static_cast<int64_t>(c->element_count()))
    return ffi::Error::InvalidArgument("onednn_matmul: a view reaches past its buffer");
  if (a.element_type() != b.element_type())
    return ffi::Error::InvalidArgument("onednn_matmul: operands of different dtypes");
  dnnl::memory::data_type in_t, out_t;
  if (!Dtype(a.element_type(), &in_t) || !Dtype(c->element_type(), &out_t))
    return ffi::Error::InvalidArgument("onednn_matmul: only bf16 and f32 buffers");
  int64_t macs = a_dims[r - 2] * a_dims[r - 1] * b_dims[r - 1];
  for (size_t i = 0; i + 2 < r; ++i) macs *= a_dims[i];
  // oneDNN sizes its work split by the thread count when the primitive is made: keep it in the key
  const int nthr = macs < SerialMacs() ? 1 : omp_get_max_threads();
  OmpThreads threads(nthr);
  std::string key = std::to_string(nthr) + ":";
  key.push_back(static_cast<char>('0' + static_cast<int>(in_t)));
  key.push_back(static_cast<char>('0' + static_cast<int>(out_t)));
  for (auto v : {a_dims, a_strides, b_dims, b_strides, c_dims, c_strides}) AppendKey(&key, v);
  try {
    auto& eng = Engine();
    // thread_local: XLA may run independent custom calls on several threads at once
    thread_local std::unordered_map<std::string, std::unique_ptr<Cached>> cache;
    thread_local dnnl::stream strm(eng);
    auto it = cache.find(key);
    if (it == cache.end()) {
      auto md = [](ffi::Span<const int64_t> d, ffi::Span<const int64_t> s,
                   dnnl::memory::data_type t) {
        return dnnl::memory::desc(dims(d.begin(), d.end()), t, dims(s.begin(), s.end()));
      };
      auto a_md = md(a_dims, a_strides, in_t), b_md = md(b_dims, b_strides, in_t),
           c_md = md(c_dims, c_strides, out_t);
      dnnl::matmul::primitive_desc pd(eng, a_md, b_md, c_md);
      auto entry = std::make_unique<Cached>();
      entry->prim = dnnl::matmul(pd);
      entry->a = dnnl::memory(a_md, eng, nullptr);
      entry->b = dnnl::memory(b_md, eng, nullptr);
      entry->c = dnnl::memory(c_md, eng, nullptr);
      it = cache.emplace(key, std::move(entry)).first;
    }
    Cached& k = *it->second;
    k.a.set_data_handle(a.untyped_data());
    k.b.set_data_handle(b.untyped_data());
    k.c.set_data_handle(c->untyped_data());
    k.prim.execute(strm, {{DNNL_ARG_SRC, k.a}, {DNNL_ARG_WEIGHTS, k.b}, {DNNL_ARG_DST, k.c}});
    strm.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn_matmul: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LmOnednnMatmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<ffi::Span<const int64_t>>("a_dims")
                                  .Attr<ffi::Span<const int64_t>>("a_strides")
                                  .Attr<ffi::Span<const int64_t>>("b_dims")
                                  .Attr<ffi::Span<const int64_t>>("b_strides")
                                  .Attr<ffi::Span<const int64_t>>("c_dims")
                                  .Attr<ffi::Span<const int64_t>>("c_strides"));

// ---- few-row bf16 matmul (decode): y[M, N] = x[M, K] @ w, w packed, M <= 8 per pass ------------
//
// oneDNN packs the weights on every call, which costs more than the product itself at the 1-8
// rows of a decode step. The engine packs its bf16 decode weights once (lm.kernels.pack):
// wp[g, kp, c, :] = (w[2kp, 32g + c], w[2kp + 1, 32g + c]), so each 32-column group's pairs lie in
// one contiguous run that AVX512-BF16's dot products read straight, in column order, and a step
// streams every weight once, at half the bytes of fp32.

#include <immintrin.h>

namespace {

// Column chunks are shared out over XLA's intra-op thread pool when each gets enough work to
// pay for a hand-off (OpenMP's own threads would compete with XLA's for the same cores).
constexpr int64_t kMinMacsPerChunk = 1 << 16;

struct Chunks {
  std::atomic<int64_t> next{0}, done{0};
  int64_t count = 0;
  std::function<void(int64_t)> run;
  void Work() {
    for (int64_t i; (i = next.fetch_add(1)) < count;) {
      run(i);
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

// Runs run(0..count-1): chunk 0 onwards on the calling thread, the rest handed to XLA's pool.
void RunChunks(ffi::ThreadPool& pool, int64_t count, std::function<void(int64_t)> run) {
  auto job = std::make_shared<Chunks>();
  job->count = count;
  job->run = std::move(run);
  for (int64_t t = 1; t < count; ++t) pool.Schedule([job] { job->Work(); });
  job->Work();
  while (job->done.load(std::memory_order_acquire) < count) _mm_pause();
}

template <int M, int G>
__attribute__((target("avx512f,avx512bw,avx512bf16")))
void PackedGroups(const uint16_t* x, const uint16_t* wp, float* y, int64_t K, int64_t K2,
                  int64_t N, int64_t g0) {
  __m512 s[M][G][2];
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) s[m][g][0] = s[m][g][1] = _mm512_setzero_ps();
  const uint16_t* base = wp + g0 * K2 * 64;
  for (int64_t kp = 0; kp < K2; ++kp) {
    const bool tail = 2 * kp + 1 == K;                 // odd K: the packed pad row is zero
    __m512bh xb[M];
#pragma GCC unroll 8
    for (int m = 0; m < M; ++m) {
      const uint32_t pair = tail ? uint32_t(x[m * K + 2 * kp])
                                 : *reinterpret_cast<const uint32_t*>(x + m * K + 2 * kp);
      xb[m] = (__m512bh)_mm512_set1_epi32(static_cast<int>(pair));
    }
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
      const uint16_t* p = base + (g * K2 + kp) * 64;
      const __m512bh a = (__m512bh)_mm512_loadu_si512(p);        // columns 0-15
      const __m512bh b = (__m512bh)_mm512_loadu_si512(p + 32);   // columns 16-31
#pragma GCC unroll 8
      for (int m = 0; m < M; ++m) {
        s[m][g][0] = _mm512_dpbf16_ps(s[m][g][0], a, xb[m]);
        s[m][g][1] = _mm512_dpbf16_ps(s[m][g][1], b, xb[m]);
      }
    }
  }
#pragma GCC unroll 8
  for (int m = 0; m < M; ++m)
#pragma GCC unroll 4
    for (int g = 0; g < G; ++g) {
      float* out = y + m * N + 32 * (g0 + g);
      _mm512_storeu_ps(out, s[m][g][0]);
      _mm512_storeu_ps(out + 16, s[m][g][1]);
    }
}

template <int M>
void Packed(const uint16_t* x, const uint16_t* wp, float* y, int64_t K, int64_t K2, int64_t N,
            ffi::ThreadPool& pool) {
  constexpr int G = M <= 2 ? 4 : (M <= 4 ? 2 : 1);
  const int64_t n32 = N / 32, blocks = (n32 + G - 1) / G;
  const int64_t by_work = std::max<int64_t>(1, M * K * N / kMinMacsPerChunk);
  const int64_t count = std::min<int64_t>(
      {std::max<int64_t>(1, pool.num_threads()), blocks, by_work});
  const int64_t per = (blocks + count - 1) / count;      // G-groups per chunk
  RunChunks(pool, count, [=](int64_t t) {
    const int64_t b1 = std::min(blocks, (t + 1) * per);
    for (int64_t b = t * per; b < b1; ++b) {
      if ((b + 1) * G <= n32) PackedGroups<M, G>(x, wp, y, K, K2, N, b * G);
      else for (int64_t g = b * G; g < n32; ++g) PackedGroups<M, 1>(x, wp, y, K, K2, N, g);
    }
  });
}

ffi::Error PackedMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::BF16> x, ffi::Buffer<ffi::BF16> wp,
                        ffi::ResultBuffer<ffi::F32> y) {
  auto xd = x.dimensions(), wd = wp.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 3 || yd.size() != 2 || wd[2] != 64 ||
      (xd[1] + 1) / 2 != wd[1] || yd[0] != xd[0] || yd[1] != 32 * wd[0])
    return ffi::Error::InvalidArgument("packed_matmul: shapes do not match");
  const int64_t M = xd[0], K = xd[1], K2 = wd[1], N = yd[1];
  auto* xp = reinterpret_cast<const uint16_t*>(x.untyped_data());
  auto* wq = reinterpret_cast<const uint16_t*>(wp.untyped_data());
  float* yp = y->typed_data();
  for (int64_t m0 = 0; m0 < M; m0 += 8) {     // more than 8 rows (a prefill): blocks of 8
    const int64_t rows = std::min<int64_t>(8, M - m0);
    const uint16_t* xr = xp + m0 * K;
    float* yr = yp + m0 * N;
    switch (rows) {
      case 1: Packed<1>(xr, wq, yr, K, K2, N, pool); break;
      case 2: Packed<2>(xr, wq, yr, K, K2, N, pool); break;
      case 3: Packed<3>(xr, wq, yr, K, K2, N, pool); break;
      case 4: Packed<4>(xr, wq, yr, K, K2, N, pool); break;
      case 5: Packed<5>(xr, wq, yr, K, K2, N, pool); break;
      case 6: Packed<6>(xr, wq, yr, K, K2, N, pool); break;
      case 7: Packed<7>(xr, wq, yr, K, K2, N, pool); break;
      default: Packed<8>(xr, wq, yr, K, K2, N, pool); break;
    }
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LmPackedMatmul, PackedMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

// ---- decode attention: one new query per row over the filled part of its KV cache ------------
//
// y[b, k, g, :] = softmax_j(scale * q[b, k, g, :] . K[b, k, j, :]) @ V[b, k, j, :] over the slots
// j <= pos[b] (all S slots for a position past the buffer: a no-op row, as the mask in
// lm.model says). XLA's dots read every slot of the buffer (and at one row transpose each K and
// V first); this reads only a row's filled prefix, straight from a bf16 or f32 cache, with
// float32 scores, softmax and sums.

namespace {

constexpr int64_t kMaxHead = 256;        // head_dim: a multiple of 16 up to this (lm.kernels)

__attribute__((target("avx512f")))
inline __m512 Load16(const float* p) { return _mm512_loadu_ps(p); }

__attribute__((target("avx512f")))
inline __m512 Load16(const uint16_t* p) {   // 16 bf16 -> f32: the bits shifted into the top half
  const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

// e^x for x <= 0 (scores minus their max): Cephes' expf, 2^n e^r with |r| <= ln2/2 (rel. ~1e-7)
__attribute__((target("avx512f")))
inline __m512 Exp16(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-87.3f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// One (row, kv head): G queries [G, H] over L slots of k, v [S, H]; s: scratch of G * Lp floats.
template <typename T>
__attribute__((target("avx512f")))
void Head(const float* q, const T* k, const T* v, float* y, int64_t G, int64_t H, int64_t L,
          float scale, float* s) {
  const int64_t Lp = (L + 15) / 16 * 16, hb = H / 16;
  for (int64_t g = 0; g < G; ++g) {
    __m512 qg[kMaxHead / 16];
    for (int64_t i = 0; i < hb; ++i) qg[i] = _mm512_mul_ps(Load16(q + g * H + 16 * i),
                                                         _mm512_set1_ps(scale));
    float* sg = s + g * Lp;
    for (int64_t j = 0; j < L; ++j) {
      const T* kj = k + j * H;
      __m512 a = _mm512_mul_ps(qg[0], Load16(kj));
      for (int64_t i = 1; i < hb; ++i) a = _mm512_fmadd_ps(qg[i], Load16(kj + 16 * i), a);
      sg[j] = _mm512_reduce_add_ps(a);
    }
    __m512 mx = _mm512_set1_ps(-INFINITY);
    for (int64_t j = 0; j < Lp; j += 16) {
      const __mmask16 live = j + 16 <= L ? 0xFFFF : (__mmask16)((1u << (L - j)) - 1);
      mx = _mm512_mask_max_ps(mx, live, mx, _mm512_loadu_ps(sg + j));
    }
    const __m512 m = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
    __m512 sum = _mm512_setzero_ps();
    for (int64_t j = 0; j < Lp; j += 16) {
      const __mmask16 live = j + 16 <= L ? 0xFFFF : (__mmask16)((1u << (L - j)) - 1);
      const __m512 e = _mm512_maskz_mov_ps(live, Exp16(_mm512_sub_ps(_mm512_loadu_ps(sg + j), m)));
      _mm512_storeu_ps(sg + j, e);
      sum = _mm512_add_ps(sum, e);
    }
    __m512 acc[kMaxHead / 16];
    for (int64_t i = 0; i < hb; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t j = 0; j < L; ++j) {
      const __m512 pj = _mm512_set1_ps(sg[j]);
      const T* vj = v + j * H;
      for (int64_t i = 0; i < hb; ++i) acc[i] = _mm512_fmadd_ps(pj, Load16(vj + 16 * i), acc[i]);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(sum));
    for (int64_t i = 0; i < hb; ++i)
      _mm512_storeu_ps(y + g * H + 16 * i, _mm512_mul_ps(acc[i], inv));
  }
}

template <typename T>
void Attend(const float* q, const T* k, const T* v, const int32_t* pos, float* y, int64_t B,
            int64_t K, int64_t G, int64_t S, int64_t H, float scale, ffi::ThreadPool& pool) {
  auto len = [=](int64_t b) {
    return pos[b] < 0 ? int64_t{1} : std::min<int64_t>(int64_t{pos[b]} + 1, S);
  };
  int64_t macs = 0;
  for (int64_t b = 0; b < B; ++b) macs += 2 * K * G * H * len(b);
  const int64_t units = B * K;
  const int64_t count = std::min<int64_t>(
      {std::max<int64_t>(1, pool.num_threads()), units,
       std::max<int64_t>(1, macs / kMinMacsPerChunk)});
  const int64_t per = (units + count - 1) / count;
  RunChunks(pool, count, [=](int64_t t) {
    std::vector<float> s(G * ((S + 15) / 16 * 16));
    for (int64_t u = t * per; u < std::min(units, (t + 1) * per); ++u) {
      const int64_t b = u / K;
      Head<T>(q + u * G * H, k + u * S * H, v + u * S * H, y + u * G * H, G, H, len(b), scale,
              s.data());
    }
  });
}

// The new key and value of each row written at its position (none past the buffer), in place
// when XLA aliased the outputs to the cache operands (else the cache is copied over first).
void Write(const ffi::AnyBuffer& buf, const ffi::AnyBuffer& x, ffi::Result<ffi::AnyBuffer>& out,
           const int32_t* pos, int64_t B, int64_t K, int64_t S, int64_t H) {
  const int64_t w = ffi::ByteWidth(buf.element_type());
  auto* dst = static_cast<char*>(out->untyped_data());
  if (dst != buf.untyped_data()) std::memcpy(dst, buf.untyped_data(), buf.size_bytes());
  const auto* src = static_cast<const char*>(x.untyped_data());
  for (int64_t b = 0; b < B; ++b) {
    if (pos[b] < 0 || pos[b] >= S) continue;
    for (int64_t k = 0; k < K; ++k)
      std::memcpy(dst + ((b * K + k) * S + pos[b]) * H * w, src + (b * K + k) * H * w, H * w);
  }
}

ffi::Error DecodeAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::AnyBuffer kn,
                           ffi::AnyBuffer vn, ffi::AnyBuffer k, ffi::AnyBuffer v,
                           ffi::Buffer<ffi::S32> pos, ffi::ResultBuffer<ffi::F32> y,
                           ffi::Result<ffi::AnyBuffer> ko, ffi::Result<ffi::AnyBuffer> vo,
                           float scale) {
  auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions(), nd = kn.dimensions();
  const auto t = k.element_type();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4 || nd.size() != 3 || kd[0] != qd[0] ||
      kd[1] != qd[1] || kd[3] != qd[3] || !std::equal(kd.begin(), kd.end(), vd.begin()) ||
      nd[0] != kd[0] || nd[1] != kd[1] || nd[2] != kd[3] ||
      !std::equal(nd.begin(), nd.end(), vn.dimensions().begin()) ||
      pos.dimensions().size() != 1 || pos.dimensions()[0] != qd[0] ||
      !std::equal(qd.begin(), qd.end(), y->dimensions().begin()) || qd[3] % 16 != 0 ||
      qd[3] > kMaxHead || v.element_type() != t || kn.element_type() != t ||
      vn.element_type() != t || ko->element_type() != t || vo->element_type() != t)
    return ffi::Error::InvalidArgument("decode_attention: shapes or types do not match");
  if (t != ffi::DataType::F32 && t != ffi::DataType::BF16)
    return ffi::Error::InvalidArgument("decode_attention: the cache must be f32 or bf16");
  const int64_t B = qd[0], K = qd[1], G = qd[2], H = qd[3], S = kd[2];
  const int32_t* pp = pos.typed_data();
  Write(k, kn, ko, pp, B, K, S, H);
  Write(v, vn, vo, pp, B, K, S, H);
  const float* qp = q.typed_data();
  float* yp = y->typed_data();
  if (t == ffi::DataType::F32)
    Attend<float>(qp, static_cast<const float*>(ko->untyped_data()),
                  static_cast<const float*>(vo->untyped_data()), pp, yp, B, K, G, S, H, scale,
                  pool);
  else
    Attend<uint16_t>(qp, static_cast<const uint16_t*>(ko->untyped_data()),
                     static_cast<const uint16_t*>(vo->untyped_data()), pp, yp, B, K, G, S, H,
                     scale, pool);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LmDecodeAttention, DecodeAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()     // q [B, K, G, H]
                                  .Arg<ffi::AnyBuffer>()            // new k [B, K, H]
                                  .Arg<ffi::AnyBuffer>()            // new v [B, K, H]
                                  .Arg<ffi::AnyBuffer>()            // k cache [B, K, S, H]
                                  .Arg<ffi::AnyBuffer>()            // v cache
                                  .Arg<ffi::Buffer<ffi::S32>>()     // positions [B]
                                  .Ret<ffi::Buffer<ffi::F32>>()     // y [B, K, G, H]
                                  .Ret<ffi::AnyBuffer>()            // k cache, written
                                  .Ret<ffi::AnyBuffer>()            // v cache, written
                                  .Attr<float>("scale"));

extern "C" int lm_onednn_isa() {
  // the best instruction set oneDNN found on this CPU (dnnl_cpu_isa_t), for diagnostics
  return static_cast<int>(dnnl::get_effective_cpu_isa());
}
