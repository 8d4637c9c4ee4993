// Feeds the bytes as a .seqrec model file to its loader (weights/seqrec_file.h:
// load_model_file, through a memfd path since the loader only opens paths), and a file it
// accepts on to what `seqrec serve` does with it: a Recommender built from it
// (weights/model_loader.cc) answering two small requests.
// Version 2 to 4 files carry an XXH3 checksum of their header, which a mutation almost always
// breaks; so an input whose header checksum is wrong is loaded as is AND with the checksum
// made right, so the mutations reach the header's parser.
// A failure: any sanitizer report; an exception other than seqrec::Error (the loader promises
// one naming the field, the engine one for a model it cannot run); a loaded model that
// validate_model_file refuses; a hang (libFuzzer's -timeout).
#include <xxhash.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "engine/error.h"
#include "engine/recommender.h"
#include "engine/workspace.h"
#include "fuzz/fuzz_common.h"
#include "weights/seqrec_file.h"

namespace {

using seqrec::fuzz::fail;

constexpr size_t kPrefixBytes = 32;  // magic, version, reserved, header length, header checksum

// The bytes with the version 2/3 header checksum recomputed; empty when it was right already
// or the input is not shaped like a version 2 or 3 file.
std::vector<uint8_t> with_header_checksum_fixed(const uint8_t* data, size_t size) {
  if (size < kPrefixBytes || std::memcmp(data, "SEQREC\0\1", 8) != 0) return {};
  uint32_t version;
  uint64_t header_size, stored_sum;
  std::memcpy(&version, data + 8, 4);
  std::memcpy(&header_size, data + 16, 8);
  std::memcpy(&stored_sum, data + 24, 8);
  if (version < 2 || version > 4 || header_size > size - kPrefixBytes) return {};
  const auto n = static_cast<size_t>(header_size);
  const uint64_t sum = version >= 3 ? XXH3_64bits_withSeed(data + kPrefixBytes, n, version) : XXH3_64bits(data + kPrefixBytes, n);
  if (sum == stored_sum) return {};
  std::vector<uint8_t> fixed(data, data + size);
  std::memcpy(fixed.data() + 24, &sum, 8);
  return fixed;
}

// `in_place`: the same file loaded as the server loads it (catalog in place, stored scorer
// tables), which is what answers; `file` gives the ids the requests use.
void serve(seqrec::ModelFile file, seqrec::ModelFile in_place) {
  try {
    seqrec::validate_model_file(file, "loaded");
  } catch (const seqrec::Error& e) {
    fail(std::string("load_model_file accepted a model validate_model_file refuses: ") + e.what());
  }
  // What the server would be asked first: a short history of the catalog's first items (with
  // times, for the models that read them), and a candidate list.
  std::vector<seqrec::Request> requests(2);
  for (size_t row = 1; row < file.catalog.size() && row <= 3; ++row)
    requests[0].interactions.push_back({file.catalog[row], static_cast<int64_t>(row), 5.0});
  requests[0].k = 3;
  requests[0].now = 10;
  requests[1].interactions = requests[0].interactions;
  requests[1].candidate_ids = std::vector<std::string>(file.catalog.begin() + (file.catalog.size() > 1 ? 1 : 0),
                                                       file.catalog.end());
  requests[1].recommend_seen = true;
  if (!in_place.catalog_in_place) fail("load_model_file(in_place) gave no catalog in place");
  for (size_t row = 0; row < file.catalog.size(); ++row)
    if (in_place.catalog_in_place->id(static_cast<int32_t>(row)) != file.catalog[row])
      fail("the catalog in place differs from the catalog as strings at row " + std::to_string(row));
  const seqrec::Recommender recommender(in_place.spec, std::move(in_place.tensors), std::move(*in_place.catalog_in_place),
                                        std::move(in_place.popularity), in_place.provenance.rating_threshold,
                                        seqrec::PreScan::automatic, in_place.scorer_tables);
  seqrec::Workspace workspace;
  const std::vector<seqrec::Response> responses = recommender.recommend(requests, workspace);
  if (responses.size() != requests.size()) fail("recommend answered " + std::to_string(responses.size()) + " of 2 requests");
  for (size_t i = 0; i < responses.size(); ++i)
    if (!responses[i].error && static_cast<int64_t>(responses[i].recommendations.size()) > requests[i].k)
      fail("recommend returned more than k items");
}

void load(const uint8_t* data, size_t size) {
  const seqrec::fuzz::BytesFile file(data, size);
  seqrec::ModelFile model, in_place;
  try {
    model = seqrec::load_model_file(file.path());
  } catch (const seqrec::Error&) {
    return;
  }
  try {
    in_place = seqrec::load_model_file(file.path(), seqrec::CatalogLoad::in_place);
  } catch (const seqrec::Error& e) {
    fail(std::string("a file that loads with its catalog as strings fails in place: ") + e.what());
  }
  // Version 1 files have no catalog section to use in place: the server indexes their strings.
  if (!in_place.catalog_in_place) in_place.catalog_in_place = std::make_shared<seqrec::Catalog>(in_place.catalog);
  try {
    serve(std::move(model), std::move(in_place));
  } catch (const seqrec::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  load(data, size);
  const std::vector<uint8_t> fixed = with_header_checksum_fixed(data, size);
  if (!fixed.empty()) load(fixed.data(), fixed.size());
  return 0;
}
