#include "engine/answer.h"

#include "engine/ranker.h"

namespace seqrec {

namespace {

std::string join_ids(const std::vector<std::string>& ids, size_t max_listed) {
  std::string out;
  for (size_t i = 0; i < ids.size() && i < max_listed; ++i) out += (i ? ", " : "") + ids[i];
  if (ids.size() > max_listed) out += ", ...";
  return out;
}

void append_sentence(std::optional<std::string>& message, const std::string& sentence) {
  message = message ? *message + " " + sentence : sentence;
}

}  // namespace

Response answer(const Request& request, const PreparedRequest& prepared, const Catalog& catalog, AnswerKind kind,
                std::span<const int32_t> rows, std::span<const float> raw, const ScoreReport& report) {
  Response response;
  std::vector<ScoredItem>& out = response.recommendations;
  const std::vector<std::string> unknown = unknown_candidates(catalog, request);
  out.reserve(rows.size() + unknown.size());
  // Known items keep their order; an unknown candidate (score 0) goes after every known item
  // scoring >= 0 and before those below.
  size_t u = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const float score = report(raw[i]);
    while (u < unknown.size() && score < 0.0f) out.push_back({unknown[u++], -1, 0.0f});
    out.push_back({std::string(catalog.id(rows[i])), rows[i], score});
  }
  while (u < unknown.size()) out.push_back({unknown[u++], -1, 0.0f});
  if (static_cast<int64_t>(out.size()) > request.k) out.resize(static_cast<size_t>(request.k));

  if (kind == AnswerKind::popularity)
    append_sentence(response.message, "No known positive interaction: showing the most popular items.");
  if (kind == AnswerKind::empty_history)
    append_sentence(response.message,
                    "No known positive interaction: showing the model's scores for an empty history.");
  if (!prepared.unknown_ids.empty())
    append_sentence(response.message, "Skipped " + std::to_string(prepared.unknown_ids.size()) +
                                          " item id(s) unknown to the model: " + join_ids(prepared.unknown_ids, 10) +
                                          ".");
  if (static_cast<int64_t>(out.size()) < request.k)
    append_sentence(response.message, "Only " + std::to_string(out.size()) + " item(s) could be recommended (k = " +
                                          std::to_string(request.k) + ").");
  for (const std::string& note : prepared.notes) append_sentence(response.message, note);
  return response;
}

Response answer_error(const RequestError& error) {
  Response response;
  response.error = error;
  return response;
}

}  // namespace seqrec
