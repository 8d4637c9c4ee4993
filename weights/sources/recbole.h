// RecBole (github: RUCAIBox/RecBole) SASRec and BERT4Rec checkpoints → canonical model.
// See docs/models.md "RecBole SASRec and BERT4Rec" and README "Converting RecBole models".
#pragma once

#include <optional>
#include <string>

#include "engine/model_spec.h"
#include "weights/sources/source.h"

namespace seqrec {

// Hyper-parameters RecBole keeps in the checkpoint's pickled Config; a flag given here wins
// over the config, and a value neither gives nor the weights imply is an error naming the flag.
struct RecboleOptions {
  std::optional<Activation> activation;  // --activation (config: hidden_act)
  std::optional<double> ln_eps;          // --ln-eps (config: layer_norm_eps)
  std::optional<std::string> model;      // --model sasrec|bert4rec (config: model)
};

// Reads the dict RecBole's trainer saves ({config, epoch, cur_step, best_valid_score,
// state_dict, other_parameter, optimizer}, pickle protocol 4) or a bare state_dict.
// Uses options.heads (config: n_heads), options.max_len (config: MAX_ITEM_LIST_LENGTH),
// options.score (config: loss_type; CE → softmax, BPR → raw), options.item_ids_file
// (required: RecBole's field2id_token['item_id'], one per line, row 0 = [PAD]) and
// options.rating_threshold. Throws seqrec::Error.
ModelFile convert_recbole(const ConvertOptions& options, const RecboleOptions& recbole);

}  // namespace seqrec
