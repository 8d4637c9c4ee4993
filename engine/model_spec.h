// The canonical model spec (../shared/spec/models.md): one description that every source
// (SASRec.pytorch, RecBole SASRec / BERT4Rec, safetensors) is mapped onto by weights/.
// The engine builds its layers from it; the .seqrec file stores it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace seqrec {

// How one transformer block composes attention, FFN, residuals and norms.
enum class Block {
  pre_ln,           // x += Attn(LN(x)); x += FFN(LN(x))
  post_ln,          // x = LN(x + Attn(x)); x = LN(x + FFN(x))
  sasrec_original,  // q = LN_a(x); x = q + Attn(q, x, x); x = LN_f(x); x = x + FFN(x)
};
enum class AttentionKind { causal, bidirectional };
enum class Padding { left, right };
// How a slot gets its position id.
enum class Positions {
  slot_or_zero,  // 1-based slot index for real items, 0 for padded slots (SASRec.pytorch >= 2024-06)
  slot_index,    // 0-based slot index for every slot, padded or not (old SASRec.pytorch, RecBole)
};
enum class Activation { relu, gelu, gelu_tanh, swish, tanh, sigmoid };
enum class Readout {
  last_slot,                 // the slot of the most recent item (L-1 left padded, len-1 right padded)
  mask_token,                // append [MASK] after the last item (L+1 slots), read it (BERT4Rec <= v1.1)
  mask_token_drop_first,     // append [MASK], drop the first slot, read it (BERT4Rec >= v1.2)
};
enum class ScoreKind { sigmoid, softmax, raw };

struct ModelSpec {
  Block block = Block::post_ln;
  AttentionKind attention = AttentionKind::causal;
  bool mask_padded_keys = false;   // padded key slots get an additive -10000 (RecBole)
  bool zero_padded_rows = false;   // padded rows multiplied by 0 after embedding and each block
  bool embed_scale = false;        // item embedding * sqrt(d)
  bool embed_norm = false;         // LayerNorm right after item + position embedding
  Positions positions = Positions::slot_or_zero;
  Padding padding = Padding::left;
  Activation activation = Activation::relu;
  bool final_norm = false;         // LayerNorm on the encoder output
  Readout readout = Readout::last_slot;
  bool head = false;               // dense -> GELU -> LayerNorm before scoring (BERT4Rec v1.2)
  bool output_bias = false;        // per-item bias added to the logits
  float ln_eps = 1e-8f;
  ScoreKind score = ScoreKind::sigmoid;

  int64_t max_len = 0;      // L: the most recent L positives are kept
  int64_t d = 0;            // hidden size
  int64_t heads = 1;        // h; d_h = d / h
  int64_t ffn_dim = 0;
  int64_t n_layers = 0;
  int64_t n_items = 0;      // catalog rows, row 0 = padding (never recommended)

  // Number of slots the encoder runs over (L, or L+1 when a mask token takes its own slot).
  int64_t n_slots() const;
  // Rows of the position table (slot_or_zero has an extra row 0 for padding).
  int64_t n_positions() const;
  // Rows of the item embedding table: n_items, plus one [MASK] row for mask readouts.
  int64_t item_table_rows() const;
  // Throws seqrec::Error naming the first inconsistent field.
  void validate() const;
};

// A tensor the spec requires, by its canonical /-scoped name, with its exact shape.
struct TensorDecl {
  std::string name;
  std::vector<int64_t> shape;
};
// Every tensor a model of this spec reads, in a fixed order. The loader checks a file
// against this list; the encoder looks its weights up by these same names.
std::vector<TensorDecl> required_tensors(const ModelSpec& spec);

namespace tensor_names {
std::string layer(int64_t i);  // "encoder/layer_<i>"
}

// Enum <-> text, as written in .seqrec provenance, safetensors metadata and `inspect`.
const char* to_string(Block v);
const char* to_string(AttentionKind v);
const char* to_string(Padding v);
const char* to_string(Positions v);
const char* to_string(Activation v);
const char* to_string(Readout v);
const char* to_string(ScoreKind v);
// parse_*: throws seqrec::Error "<field>: unknown value '<text>' (expected a|b|c)".
Block parse_block(const std::string& field, const std::string& text);
AttentionKind parse_attention(const std::string& field, const std::string& text);
Padding parse_padding(const std::string& field, const std::string& text);
Positions parse_positions(const std::string& field, const std::string& text);
Activation parse_activation(const std::string& field, const std::string& text);
Readout parse_readout(const std::string& field, const std::string& text);
ScoreKind parse_score(const std::string& field, const std::string& text);

}  // namespace seqrec
