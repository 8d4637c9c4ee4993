// seqrec export: a .seqrec model as a safetensors file under seqrec's canonical names, the
// spec in __metadata__ — what `seqrec convert --from safetensors` reads back.
#include <iostream>

#include "cli/commands.h"
#include "engine/error.h"
#include "weights/seqrec_file.h"
#include "weights/sources/safetensors_source.h"

namespace seqrec::cli {

Action add_export(CLI::App& app) {
  struct Flags {
    std::string model, safetensors;
  };
  auto f = std::make_shared<Flags>();
  app.add_option("model", f->model, "The .seqrec model file")->required();
  app.add_option("--safetensors", f->safetensors, "The safetensors file to write")->required();
  app.footer("Tensors are written as F32 under the names `seqrec convert --from safetensors` expects; the spec, "
             "catalog, popularity and rating threshold go in __metadata__.");
  return [f] {
    const ModelFile model = load_model_file(f->model);
    export_safetensors(model, f->safetensors);
    std::cerr << "wrote " << f->safetensors << ": " << model.tensors.size() << " tensors, " << model.spec.n_items - 1
              << " items\n";
    return 0;
  };
}

}  // namespace seqrec::cli
