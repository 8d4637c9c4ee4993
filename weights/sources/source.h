// Mappers from a training framework's checkpoint to seqrec's canonical model
// (engine/model_spec.h names and spec). One file per framework in this folder.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "engine/model_spec.h"
#include "weights/seqrec_file.h"

namespace seqrec {

// What `seqrec convert` was told. Unset values are read from the checkpoint, its file
// name, or the source's defaults.
struct ConvertOptions {
  std::string checkpoint;
  std::optional<std::string> item_ids_file;  // one id per line in row order; line 0 = padding row
  std::optional<int64_t> heads;
  std::optional<int64_t> max_len;
  std::optional<std::string> variant;
  std::optional<double> rating_threshold;
  std::optional<ScoreKind> score;
  std::optional<int64_t> time_span;            // tisasrec
  std::optional<std::string> ffn_activation;   // tisasrec: none|relu
  std::optional<int64_t> attention_dim;        // hstu: dqk
  std::optional<int64_t> linear_dim;           // hstu: dv
  std::optional<double> temperature;           // hstu: softmax temperature
};

// One mapper per source; each throws seqrec::Error naming the file, the key or the flag.
ModelFile convert_pmixer(const ConvertOptions& options);    // SASRec.pytorch state_dict
ModelFile convert_tisasrec(const ConvertOptions& options);  // TiSASRec.pytorch state_dict
ModelFile convert_gsasrec(const ConvertOptions& options);   // gSASRec-pytorch state_dict
ModelFile convert_hstu(const ConvertOptions& options);      // generative-recommenders' HSTU trainer checkpoint

// Drops the catalog rows whose id is empty (an empty line of the item-id file: a row that is
// never an input nor recommended, e.g. HSTU's raw-id rows that are no movie) from the catalog
// and every row-indexed tensor (the item tables, the output bias, popularity); row 0 stays.
void drop_non_item_rows(ModelFile& model);

// Row ids from an item-id file: exactly `rows` lines (line 0, the padding row, is kept but
// never looked up; an empty line marks a row that is not an item, see drop_non_item_rows).
// Throws seqrec::Error naming the file, the line and expected vs. found.
std::vector<std::string> read_item_ids(const std::string& path, int64_t rows);

// Ids "0", "1", ..., "rows-1": the data file's integer ids when no item-id file is given.
std::vector<std::string> row_number_ids(int64_t rows);

// Throws seqrec::Error naming `what` and the flat index of the first NaN / Inf.
void require_finite(const Tensor& tensor, const std::string& what);

}  // namespace seqrec
