#include <iostream>
#include <iterator>

#include "cli/commands.h"
#include "engine/error.h"
#include "engine/text.h"
#include "server/json_io.h"
#include "weights/model_loader.h"

namespace seqrec::cli {

Action add_recommend(CLI::App& app) {
  struct Flags {
    std::string model;
    std::optional<double> rating_threshold;
    api::Limits limits;
  };
  auto f = std::make_shared<Flags>();
  app.add_option("--model", f->model, "The .seqrec model file")->required();
  app.add_option("--rating-threshold", f->rating_threshold, "Override the model file's rating threshold");
  app.add_option("--max-k", f->limits.max_k, "Largest k a request may ask for")->capture_default_str();
  app.footer("Reads one POST /recommend body (JSON) on stdin, writes the response JSON on stdout.");

  return [f] {
    if (f->limits.max_k < 1) throw Error("--max-k: " + std::to_string(f->limits.max_k) + " (expected >= 1)");
    LoadedModel loaded = load_recommender(f->model, f->rating_threshold);
    const std::string body{std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>()};
    try {
      api::RecommendRequest parsed = api::parse_recommend_request(body, f->limits);
      if (parsed.user_id)
        throw api::ApiError(400, "invalid_request",
                            "user_id: \"" + *parsed.user_id +
                                "\" needs a history store; `seqrec recommend` takes user_interactions only");
      Workspace workspace;
      std::vector<Response> responses = loaded.recommender->recommend({&parsed.request, 1}, workspace);
      if (const auto& error = responses.front().error) throw api::ApiError(400, error->code, error->message);
      std::cout << api::write_response(responses.front()) << "\n";
      return 0;
    } catch (const api::ApiError& e) {
      std::cerr << "seqrec recommend: error: " << printable(e.what()) << "\n";
      return 1;
    }
  };
}

}  // namespace seqrec::cli
