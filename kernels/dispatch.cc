// Every kernel that is compiled once per instruction-set path (kernels/isa.h), routed to the
// copy of the path this process runs (kernels/cpu_isa.h decides it, once). A call costs one
// indirect jump through a table filled on first use.
#include "kernels/attention.h"
#include "kernels/cpu_isa.h"
#include "kernels/embedding.h"
#include "kernels/layer_norm.h"
#include "kernels/panel_gemm.h"
#include "kernels/quantized_scan.h"
#include "kernels/relative_attention.h"
#include "kernels/topk.h"

namespace seqrec::kernels {

namespace {
// scan_top_k is overloaded here; each path's copy defines only the batched form.
using ScanTopKBatch = void(const float*, const float*, const uint8_t*, int64_t, int64_t, ScanTopK*, int64_t,
                           ScanScratch&, ScanCode);
}  // namespace

// The kernels every path defines, with the public declarations' signatures.
#define SEQREC_PATH_KERNELS(X) \
  X(attention_head)            \
  X(relation_attention_head)   \
  X(silu_attention_head)       \
  X(offset_index_bias)         \
  X(layer_norm)                \
  X(panel_gemm)                \
  X(top_k)                     \
  X(top_k_of)                  \
  X(gather_rows)               \
  X(gather_add_rows)           \
  X(quantized_dots)            \
  X(scan_bounds)               \
  X(exact_score)

#define SEQREC_DECLARE_KERNEL(name) decltype(kernels::name) name;
#define SEQREC_DECLARE_PATH(path)                 \
  namespace path {                                \
  SEQREC_PATH_KERNELS(SEQREC_DECLARE_KERNEL)      \
  ScanTopKBatch scan_top_k;                       \
  }
SEQREC_DECLARE_PATH(portable)
#if SEQREC_BUILT_AVX2
SEQREC_DECLARE_PATH(avx2)
#endif
#if SEQREC_BUILT_AVX512
SEQREC_DECLARE_PATH(avx512)
#endif
#if SEQREC_BUILT_AVX512_VNNI
SEQREC_DECLARE_PATH(avx512_vnni)
#endif

namespace {

struct PathKernels {
#define SEQREC_KERNEL_POINTER(name) decltype(&kernels::name) name;
  SEQREC_PATH_KERNELS(SEQREC_KERNEL_POINTER)
  ScanTopKBatch* scan_top_k;
};

#define SEQREC_KERNEL_OF(name) &isa::name,
#define SEQREC_PATH_TABLE(path)                                                  \
  [] {                                                                           \
    namespace isa = path;                                                        \
    return PathKernels{SEQREC_PATH_KERNELS(SEQREC_KERNEL_OF) & isa::scan_top_k}; \
  }()

const PathKernels& active() {
  static const PathKernels table = [] {
    switch (cpu_isa()) {
#if SEQREC_BUILT_AVX512_VNNI
      case CpuIsa::avx512_vnni: return SEQREC_PATH_TABLE(avx512_vnni);
#endif
#if SEQREC_BUILT_AVX512
      case CpuIsa::avx512: return SEQREC_PATH_TABLE(avx512);
#endif
#if SEQREC_BUILT_AVX2
      case CpuIsa::avx2: return SEQREC_PATH_TABLE(avx2);
#endif
      default: return SEQREC_PATH_TABLE(portable);
    }
  }();
  return table;
}

}  // namespace

void attention_head(const float* q, int64_t ld_q, int64_t q_begin, int64_t n_q, const float* k, const float* v,
                    int64_t ld_kv, int64_t n_kv, int64_t d_h, int64_t key_begin, int64_t key_end, bool causal,
                    float first_key_weight, float scale, float* out, int64_t ld_out, float* scratch) {
  active().attention_head(q, ld_q, q_begin, n_q, k, v, ld_kv, n_kv, d_h, key_begin, key_end, causal, first_key_weight,
                        scale, out, ld_out, scratch);
}

void relation_attention_head(const float* q, int64_t ld_q, int64_t n_q, const float* k, const float* v, int64_t ld_kv,
                             int64_t n_kv, int64_t d_h, const float* rk, const float* rv, int64_t ld_r, int64_t n_rel,
                             const int32_t* rel, int64_t ld_rel, int64_t first_visible, float scale, float* out,
                             int64_t ld_out, float* scratch) {
  active().relation_attention_head(q, ld_q, n_q, k, v, ld_kv, n_kv, d_h, rk, rv, ld_r, n_rel, rel, ld_rel,
                                   first_visible, scale, out, ld_out, scratch);
}

void silu_attention_head(const float* q, int64_t ld_q, int64_t n_q, const float* k, int64_t ld_k, const float* v,
                         int64_t ld_v, int64_t n_kv, int64_t d_qk, int64_t d_v, const float* bias, int64_t ld_bias,
                         int64_t first_visible, float divisor, float* out, int64_t ld_out, float* scratch) {
  active().silu_attention_head(q, ld_q, n_q, k, ld_k, v, ld_v, n_kv, d_qk, d_v, bias, ld_bias, first_visible, divisor,
                               out, ld_out, scratch);
}

void offset_index_bias(const float* by_offset, int64_t offset, const float* by_index, const int32_t* index,
                       int64_t ld_index, int64_t n_q, int64_t first_visible, float* out, int64_t ld_out) {
  active().offset_index_bias(by_offset, offset, by_index, index, ld_index, n_q, first_visible, out, ld_out);
}

void layer_norm(const float* x, int64_t ld_x, int64_t rows, int64_t dim, const float* gamma, const float* beta,
                float eps, float* y, int64_t ld_y) {
  active().layer_norm(x, ld_x, rows, dim, gamma, beta, eps, y, ld_y);
}

void panel_gemm(const WeightPanels& w, const float* x, int64_t ld_x, int64_t rows, Epilogue epilogue, float* y,
                const float* residual) {
  active().panel_gemm(w, x, ld_x, rows, epilogue, y, residual);
}

int64_t top_k(const float* scores, int64_t n, const uint8_t* skip, int64_t k, int32_t* out) {
  return active().top_k(scores, n, skip, k, out);
}

int64_t top_k_of(const float* scores, const int32_t* indices, int64_t n_indices, const uint8_t* skip, int64_t k,
                 int32_t* out) {
  return active().top_k_of(scores, indices, n_indices, skip, k, out);
}

void gather_rows(const float* table, int64_t dim, const int32_t* rows, int64_t n, float scale, float* out,
                 int64_t ld_out) {
  active().gather_rows(table, dim, rows, n, scale, out, ld_out);
}

void gather_add_rows(const float* table, int64_t dim, const int32_t* rows, int64_t n, float* out, int64_t ld_out) {
  active().gather_add_rows(table, dim, rows, n, out, ld_out);
}

void quantized_dots(const uint8_t* qtable, int64_t n, int64_t d, const ScanQuery& query, int32_t* out) {
  active().quantized_dots(qtable, n, d, query, out);
}

void scan_bounds(const uint8_t* qtable, int64_t n, int64_t d, const float* bias, const ScanQuery& query, float* lower,
                 float* upper) {
  active().scan_bounds(qtable, n, d, bias, query, lower, upper);
}

float exact_score(const float* h, const float* w, int64_t d) { return active().exact_score(h, w, d); }

void scan_top_k(const float* table, const float* bias, const uint8_t* qtable, int64_t n, int64_t d, ScanTopK* queries,
                int64_t n_queries, ScanScratch& scratch, ScanCode code) {
  active().scan_top_k(table, bias, qtable, n, d, queries, n_queries, scratch, code);
}

// Conveniences over the batched scan: a scratch of their own; one query.
void scan_top_k(const float* table, const float* bias, const uint8_t* qtable, int64_t n, int64_t d, ScanTopK* queries,
                int64_t n_queries, ScanCode code) {
  ScanScratch scratch;
  scan_top_k(table, bias, qtable, n, d, queries, n_queries, scratch, code);
}

int64_t scan_top_k(const float* table, const float* bias, const uint8_t* qtable, int64_t n, int64_t d, const float* h,
                   const int32_t* never, int64_t n_never, int64_t k, int32_t* rows, float* scores, TopKStats* stats,
                   ScanCode code) {
  ScanTopK query;
  query.h = h;
  query.never = never;
  query.n_never = n_never;
  query.k = k;
  query.rows = rows;
  query.scores = scores;
  scan_top_k(table, bias, qtable, n, d, &query, 1, code);
  if (stats) *stats = query.stats;
  return query.found;
}

}  // namespace seqrec::kernels
