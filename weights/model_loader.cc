#include "weights/model_loader.h"

namespace seqrec {

LoadedModel load_recommender(const std::string& path, std::optional<double> rating_threshold) {
  ModelFile file = load_model_file(path);
  LoadedModel out;
  out.provenance = file.provenance;
  out.path = path;
  const std::optional<double> threshold = rating_threshold ? rating_threshold : file.provenance.rating_threshold;
  out.recommender = std::make_shared<const Recommender>(file.spec, std::move(file.tensors), std::move(file.catalog),
                                                        std::move(file.popularity), threshold);
  return out;
}

}  // namespace seqrec
