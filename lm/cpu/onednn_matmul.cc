// A JAX FFI custom call into oneDNN's matmul, for bf16 matrix products on CPUs that have bf16
// hardware (AVX512-BF16, AMX-BF16): oneDNN picks the best kernel for the CPU it runs on, where
// XLA:CPU's own bf16 dot is slower than its fp32 one. lm/kernels.py calls it (impl "onednn").
//
//   C[M, N] = op(A) @ op(B), op = transpose when trans_a / trans_b
//   A, B: bf16 or f32 (the same); C: A's dtype; accumulation in f32.
//
// Built by lm/cpu/build.py against jaxlib's FFI headers and the onednn-cpu-gomp wheel.

#include <cstdint>
#include <mutex>
#include <string>

#include "dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

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

ffi::Error Matmul(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> c,
                  bool trans_a, bool trans_b) {
  auto ad = a.dimensions(), bd = b.dimensions(), cd = c->dimensions();
  if (ad.size() != 2 || bd.size() != 2 || cd.size() != 2)
    return ffi::Error::InvalidArgument("onednn_matmul: 2-D operands only");
  if (a.element_type() != b.element_type())
    return ffi::Error::InvalidArgument("onednn_matmul: operands of different dtypes");
  const int64_t M = trans_a ? ad[1] : ad[0], K = trans_a ? ad[0] : ad[1];
  const int64_t Kb = trans_b ? bd[1] : bd[0], N = trans_b ? bd[0] : bd[1];
  if (K != Kb || cd[0] != M || cd[1] != N)
    return ffi::Error::InvalidArgument("onednn_matmul: shapes do not match");
  dnnl::memory::data_type in_t, out_t;
  if (!Dtype(a.element_type(), &in_t) || !Dtype(c->element_type(), &out_t))
    return ffi::Error::InvalidArgument("onednn_matmul: only bf16 and f32 buffers");
  using dims = dnnl::memory::dims;
  // a transposed operand is the stored matrix read with swapped strides (no copy)
  dnnl::memory::desc a_md(dims{M, K}, in_t, trans_a ? dims{1, M} : dims{K, 1});
  dnnl::memory::desc b_md(dims{K, N}, in_t, trans_b ? dims{1, K} : dims{N, 1});
  dnnl::memory::desc c_md(dims{M, N}, out_t, dims{N, 1});
  try {
    auto& eng = Engine();
    // oneDNN caches primitives by descriptor: a repeated shape reuses the compiled kernel
    dnnl::matmul::primitive_desc pd(eng, a_md, b_md, c_md);
    dnnl::matmul prim(pd);
    dnnl::memory am(a_md, eng, a.untyped_data()), bm(b_md, eng, b.untyped_data()),
        cm(c_md, eng, c->untyped_data());
    dnnl::stream strm(eng);
    prim.execute(strm, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
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
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));

extern "C" int lm_onednn_isa() {
  // the best instruction set oneDNN found on this CPU (dnnl_cpu_isa_t), for diagnostics
  return static_cast<int>(dnnl::get_effective_cpu_isa());
}
