// What a model is, as a composition the reader can see (docs/models.md):
//
//   input stage  — a sequence of item rows (and their times) becomes embedded rows
//   block stack  — n_layers blocks of one kind (transformer, tisasrec, hstu)
//   read-out     — which row's state is the user, and what is applied to it
//   scorer       — that state against the item table, and the score the API reports
//
// Every source a converter maps (SASRec.pytorch, RecBole, TiSASRec, gSASRec, HSTU,
// safetensors) is one ModelSpec. The .seqrec file and safetensors metadata store it as named
// text fields (spec_fields / parse_spec_fields); each block kind owns its fields, its weight
// names and its validation (engine/blocks/).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace seqrec {

// ---- input stage ---------------------------------------------------------------------------
enum class Padding { left, right };
// How a slot gets its position id.
enum class Positions {
  none,          // no position embedding at the input (TiSASRec: positions live inside attention)
  slot_or_zero,  // 1-based slot index for real items, 0 for padded slots (SASRec.pytorch >= 2024-06)
  slot_index,    // 0-based slot index for every slot, padded or not (old SASRec.pytorch, RecBole, gSASRec, HSTU)
};
struct InputSpec {
  bool embed_scale = false;       // item embedding * sqrt(d)
  Positions positions = Positions::slot_or_zero;
  Padding padding = Padding::left;
  bool embed_norm = false;        // LayerNorm right after item + position embedding (RecBole)
  bool zero_padded_rows = false;  // padded rows multiplied by 0 after the embedding and each block
  bool operator==(const InputSpec&) const = default;
};

// ---- block stack ---------------------------------------------------------------------------
enum class BlockKind {
  pre_ln,           // x += Attn(LN(x)); x += FFN(LN(x))
  post_ln,          // x = LN(x + Attn(x)); x = LN(x + FFN(x))
  sasrec_original,  // q = LN_a(x); x = q + Attn(q, x, x); x = LN_f(x); x = x + FFN(x)
  tisasrec,         // sasrec_original with absolute-position and time-interval K/V tables in attention
  hstu,             // pointwise SiLU attention with relative position and time biases, u * norm(attn) gating
};
enum class AttentionKind { causal, bidirectional };
enum class Activation { none, relu, gelu, gelu_tanh, swish, tanh, sigmoid };

struct BlockSpec {
  BlockKind kind = BlockKind::post_ln;
  int64_t n_layers = 0;
  int64_t heads = 1;        // h
  float ln_eps = 1e-8f;     // every LayerNorm of the model (1e-8 SASRec.pytorch, 1e-12 RecBole, 1e-5 gSASRec, 1e-6 HSTU)
  // Transformer kinds (pre_ln, post_ln, sasrec_original) and tisasrec:
  AttentionKind attention = AttentionKind::causal;
  bool mask_padded_keys = false;  // padded key slots get an additive -10000 (RecBole) / -inf (gSASRec)
  Activation activation = Activation::relu;
  int64_t ffn_dim = 0;
  bool out_projection = true;     // attention output projection (gSASRec and TiSASRec have none)
  // tisasrec: time intervals are clamped to time_span (rows 0..time_span of the time tables).
  int64_t time_span = 0;
  // hstu: q/k width per head, u/v width per head, the padded length N every attention row is
  // divided by (max_len + output slots + 1 at training), the number of time buckets.
  int64_t attention_dim = 0;
  int64_t linear_dim = 0;
  int64_t attention_len = 0;
  int64_t time_buckets = 128;
  bool operator==(const BlockSpec&) const = default;
};

// ---- read-out ------------------------------------------------------------------------------
enum class Readout {
  last_slot,              // the slot of the most recent item (L-1 left padded, len-1 right padded)
  mask_token,             // append [MASK] after the last item (L+1 slots), read it (BERT4Rec <= v1.1)
  mask_token_drop_first,  // append [MASK], drop the first slot, read it (BERT4Rec >= v1.2)
};
struct ReadoutSpec {
  Readout slot = Readout::last_slot;
  bool final_norm = false;    // LayerNorm on the read-out state
  bool head = false;          // dense -> GELU -> LayerNorm (BERT4Rec v1.2)
  bool l2_normalize = false;  // state / max(||state||, 1e-6) (HSTU: with a unit-norm table, a cosine)
  bool operator==(const ReadoutSpec&) const = default;
};

// ---- scorer --------------------------------------------------------------------------------
enum class ScoreKind { sigmoid, softmax, raw };
struct ScorerSpec {
  bool separate_table = false;  // score against output/item/weight, not the input item table (gSASRec, HSTU)
  bool output_bias = false;     // per-item bias added to the logits
  ScoreKind score = ScoreKind::sigmoid;  // what the API's score reports
  float temperature = 1.0f;     // softmax(logit / temperature)
  // Whether the softmax's normaliser counts row 0 (RecBole's loss does, [PAD] included; HSTU's
  // probability is over the items alone).
  bool padding_in_softmax = true;
  bool operator==(const ScorerSpec&) const = default;
};

struct ModelSpec {
  int64_t d = 0;        // hidden size
  int64_t max_len = 0;  // L: the most recent L positives are the input
  int64_t n_items = 0;  // catalog rows, row 0 = padding (never recommended)
  InputSpec input;
  BlockSpec blocks;
  ReadoutSpec readout;
  ScorerSpec scorer;
  bool operator==(const ModelSpec&) const = default;

  // Slots the encoder runs over (L, or L+1 when a mask token takes its own slot).
  int64_t n_slots() const;
  // Rows of the position table (slot_or_zero has an extra row 0 for padding; none has no table).
  int64_t n_positions() const;
  // Rows of the input item table: n_items, plus one [MASK] row for mask readouts.
  int64_t item_table_rows() const;
  // Whether requests' timestamps (and "now") feed the model itself, not only the order.
  bool uses_time() const;
  // Whether the model reads "now": the time the recommendation is asked for (HSTU).
  bool uses_now() const;
  // Throws seqrec::Error naming the first inconsistent field.
  void validate() const;
};

// A tensor the spec requires, by its canonical /-scoped name, with its exact shape.
struct TensorDecl {
  std::string name;
  std::vector<int64_t> shape;
};
// Every tensor a model of this spec reads, in a fixed order: the input stage's, the block
// kind's, the read-out's, the scorer's. The loader checks a file against this list; each
// stage looks its weights up by these same names.
std::vector<TensorDecl> required_tensors(const ModelSpec& spec);

// The spec as named text fields, in a fixed order — what the .seqrec file and safetensors
// metadata store. Only the fields the spec's kinds use are written.
using SpecFields = std::vector<std::pair<std::string, std::string>>;
SpecFields spec_fields(const ModelSpec& spec);
// The inverse. `where` prefixes errors ("model.seqrec: spec", "x.safetensors: __metadata__").
// A field the spec's kinds do not use is an error (or ignored, for safetensors metadata, which
// may carry anything); optional fields take their defaults (out_projection true,
// l2_normalize false, output_table tied, temperature 1, ...). Validates the result. Throws
// seqrec::Error "<where> '<field>': <problem>".
ModelSpec parse_spec_fields(const SpecFields& fields, const std::string& where, bool unknown_fields_are_errors = true);

namespace tensor_names {
std::string layer(int64_t i);  // "encoder/layer_<i>"
}

// Enum <-> text, as written in spec fields and shown by `inspect`.
const char* to_string(Padding v);
const char* to_string(Positions v);
const char* to_string(BlockKind v);
const char* to_string(AttentionKind v);
const char* to_string(Activation v);
const char* to_string(Readout v);
const char* to_string(ScoreKind v);
// parse_*: throws seqrec::Error "<field>: unknown value '<text>' (expected a|b|c)".
Padding parse_padding(const std::string& field, const std::string& text);
Positions parse_positions(const std::string& field, const std::string& text);
BlockKind parse_block(const std::string& field, const std::string& text);
AttentionKind parse_attention(const std::string& field, const std::string& text);
Activation parse_activation(const std::string& field, const std::string& text);
Readout parse_readout(const std::string& field, const std::string& text);
ScoreKind parse_score(const std::string& field, const std::string& text);

}  // namespace seqrec
