#include "weights/model_loader.h"

#include <chrono>

#include "weights/seqrec_file.h"

namespace seqrec {

LoadedModel load_recommender(const std::string& path, std::optional<double> rating_threshold,
                             const ItemTagsFor& tags_for) {
  const auto start = std::chrono::steady_clock::now();
  ModelFile file = load_model_file(path, CatalogLoad::in_place);
  LoadedModel out;
  out.path = path;
  out.source = file.provenance.source;
  out.source_detail = file.provenance.source_detail;
  out.source_file = file.provenance.source_file;
  out.converter_version = file.provenance.converter_version;
  out.format_version = file.format_version;
  const std::optional<double> threshold = rating_threshold ? rating_threshold : file.provenance.rating_threshold;
  // Version 1 files have no catalog section to use in place: their ids come as strings.
  Catalog catalog = file.catalog_in_place ? std::move(*file.catalog_in_place) : Catalog(file.catalog);
  auto recommender = std::make_shared<Recommender>(file.spec, std::move(file.tensors), std::move(catalog),
                                                   std::move(file.popularity), threshold, PreScan::automatic,
                                                   file.scorer_tables);
  if (tags_for) recommender->set_item_tags(tags_for(recommender->catalog()));
  out.recommender = std::move(recommender);
  out.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

}  // namespace seqrec
