#include "src/sim/report.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace pagedkv::sim {
namespace {

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      out += absl::StrFormat("\\u%04x", c);
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string JsonNumber(double x) {
  if (!std::isfinite(x)) return "null";
  return absl::StrFormat("%.6g", x);
}

std::string XmlEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '&': out += "&amp;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

}  // namespace

std::string FormatTable(const RunHeader& h, const std::vector<PolicyResult>& results) {
  std::string out = absl::StrFormat(
      "workload %s: %d requests | model %s, %d bytes/token | KV budget %d tokens (%.2f GiB) | "
      "block %d | max_seq_len %d\n\n",
      h.workload, h.requests, h.model, h.bytes_per_token, h.budget_tokens,
      static_cast<double>(h.budget_tokens) * static_cast<double>(h.bytes_per_token) / (1 << 30),
      h.block_size, h.max_seq_len);
  absl::StrAppendFormat(&out, "%-28s", "");
  for (const PolicyResult& r : results) absl::StrAppendFormat(&out, "%22s", r.policy);
  out += "\n";
  auto row = [&](const char* label, auto value) {
    absl::StrAppendFormat(&out, "%-28s", label);
    for (const PolicyResult& r : results) out += absl::StrFormat("%22s", value(r));
    out += "\n";
  };
  row("utilization (time mean)", [](const PolicyResult& r) { return absl::StrFormat("%.4f", r.utilization_mean); });
  row("tail waste (tokens, mean)", [](const PolicyResult& r) { return absl::StrFormat("%.0f", r.tail_waste_tokens_mean); });
  row("KV memory mean (GiB)", [](const PolicyResult& r) { return absl::StrFormat("%.3f", r.mean_memory_bytes / (1 << 30)); });
  row("KV memory peak (GiB)", [](const PolicyResult& r) { return absl::StrFormat("%.3f", r.peak_memory_bytes / (1 << 30)); });
  row("sequences peak", [](const PolicyResult& r) { return absl::StrCat(r.peak_sequences); });
  row("sequences mean", [](const PolicyResult& r) { return absl::StrFormat("%.1f", r.mean_sequences); });
  row("completed", [](const PolicyResult& r) { return absl::StrCat(r.completed); });
  row("rejected", [](const PolicyResult& r) { return absl::StrCat(r.rejected); });
  row("preemptions", [](const PolicyResult& r) { return absl::StrCat(r.preemptions); });
  row("steps", [](const PolicyResult& r) { return absl::StrCat(r.steps); });
  row("tokens per step", [](const PolicyResult& r) { return absl::StrFormat("%.1f", r.tokens_per_step); });
  row("blocks saved by sharing", [](const PolicyResult& r) { return absl::StrFormat("%.1f", r.shared_blocks_saved_mean); });
  row("memory saved by sharing", [](const PolicyResult& r) { return absl::StrFormat("%.1f%%", 100 * r.sharing_saved_fraction); });
  row("prefix hit rate", [](const PolicyResult& r) { return absl::StrFormat("%.4f", r.prefix_hit_rate); });
  row("KV run length (tokens)", [](const PolicyResult& r) { return absl::StrFormat("%.1f", r.run_tokens_mean); });
  row("tokens copied", [](const PolicyResult& r) { return absl::StrCat(r.copied_tokens); });
  row("manager time/step (us)", [](const PolicyResult& r) { return absl::StrFormat("%.2f", r.manager_ns_per_step / 1000); });
  row("attention time/step (us)", [](const PolicyResult& r) { return absl::StrFormat("%.2f", r.attention_ns_per_step / 1000); });
  row("wall time (s)", [](const PolicyResult& r) { return absl::StrFormat("%.2f", r.wall_seconds); });
  return out;
}

std::string FormatJson(const RunHeader& h, const std::vector<PolicyResult>& results) {
  std::string out = absl::StrCat(
      "{\n  \"run\": {\"workload\": ", JsonString(h.workload), ", \"requests\": ", h.requests,
      ", \"model\": ", JsonString(h.model), ", \"bytes_per_token\": ", h.bytes_per_token,
      ", \"budget_tokens\": ", h.budget_tokens, ", \"block_size\": ", h.block_size,
      ", \"max_seq_len\": ", h.max_seq_len, "}");
  for (const PolicyResult& r : results) {
    absl::StrAppend(
        &out, ",\n  ", JsonString(r.policy), ": {",
        "\"utilization_mean\": ", JsonNumber(r.utilization_mean),
        ", \"peak_sequences\": ", r.peak_sequences,
        ", \"mean_sequences\": ", JsonNumber(r.mean_sequences),
        ", \"completed\": ", r.completed, ", \"rejected\": ", r.rejected,
        ", \"preemptions\": ", r.preemptions,
        ", \"tail_waste_tokens_mean\": ", JsonNumber(r.tail_waste_tokens_mean),
        ", \"shared_blocks_saved_mean\": ", JsonNumber(r.shared_blocks_saved_mean),
        ", \"sharing_saved_fraction\": ", JsonNumber(r.sharing_saved_fraction),
        ", \"prefix_hit_rate\": ", JsonNumber(r.prefix_hit_rate),
        ", \"run_tokens_mean\": ", JsonNumber(r.run_tokens_mean),
        ", \"tokens_per_step\": ", JsonNumber(r.tokens_per_step),
        ", \"manager_ns_per_step\": ", JsonNumber(r.manager_ns_per_step),
        ", \"attention_ns_per_step\": ", JsonNumber(r.attention_ns_per_step),
        ", \"mean_memory_bytes\": ", JsonNumber(r.mean_memory_bytes),
        ", \"peak_memory_bytes\": ", JsonNumber(r.peak_memory_bytes),
        ", \"copied_tokens\": ", r.copied_tokens, ", \"steps\": ", r.steps,
        ", \"wall_seconds\": ", JsonNumber(r.wall_seconds), "}");
  }
  return out + "\n}\n";
}

std::string FormatSvg(const RunHeader& h, const std::vector<PolicyResult>& results) {
  constexpr double kWidth = 900, kPanel = 260, kLeft = 80, kRight = 170, kTop = 50, kGap = 60;
  const double plot_w = kWidth - kLeft - kRight;
  const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd"};
  double t_max = 1e-9;
  for (const PolicyResult& r : results) {
    if (!r.series_seconds.empty()) t_max = std::max(t_max, r.series_seconds.back());
  }
  const double height = kTop + 2 * kPanel + kGap + 50;
  std::string out = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
      "font-family=\"sans-serif\" font-size=\"12\">\n"
      "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
      "<text x=\"%.0f\" y=\"24\" font-size=\"15\">%s</text>\n",
      kWidth, height, kLeft,
      XmlEscape(absl::StrFormat("%s, %s, KV budget %.2f GiB, block %d", h.workload, h.model,
                                static_cast<double>(h.budget_tokens) *
                                    static_cast<double>(h.bytes_per_token) / (1 << 30),
                                h.block_size)));
  struct Panel {
    const char* title;
    const std::vector<double> PolicyResult::*series;
    double scale;
    const char* unit;
  };
  const Panel panels[] = {
      {"KV memory in use", &PolicyResult::series_memory_bytes, 1.0 / (1 << 30), "GiB"},
      {"live tokens", &PolicyResult::series_live_tokens, 1e-3, "thousand tokens"}};
  for (int p = 0; p < 2; ++p) {
    const Panel& panel = panels[p];
    const double y0 = kTop + p * (kPanel + kGap);
    double v_max = 1e-9;
    for (const PolicyResult& r : results) {
      for (double v : r.*panel.series) v_max = std::max(v_max, v * panel.scale);
    }
    v_max *= 1.05;
    absl::StrAppendFormat(&out,
                          "<text x=\"%.0f\" y=\"%.0f\" font-weight=\"bold\">%s (%s)</text>\n"
                          "<rect x=\"%.0f\" y=\"%.0f\" width=\"%.0f\" height=\"%.0f\" "
                          "fill=\"none\" stroke=\"#444\"/>\n",
                          kLeft, y0 - 8, panel.title, panel.unit, kLeft, y0, plot_w, kPanel);
    for (int tick = 0; tick <= 4; ++tick) {
      const double y = y0 + kPanel - kPanel * tick / 4.0;
      absl::StrAppendFormat(&out,
                            "<line x1=\"%.0f\" y1=\"%.1f\" x2=\"%.0f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
                            "<text x=\"%.0f\" y=\"%.1f\" text-anchor=\"end\">%.3g</text>\n",
                            kLeft, y, kLeft + plot_w, y, kLeft - 6, y + 4, v_max * tick / 4.0);
      const double x = kLeft + plot_w * tick / 4.0;
      absl::StrAppendFormat(&out, "<text x=\"%.1f\" y=\"%.0f\" text-anchor=\"middle\">%.0f s</text>\n",
                            x, y0 + kPanel + 16, t_max * tick / 4.0);
    }
    for (size_t i = 0; i < results.size(); ++i) {
      const PolicyResult& r = results[i];
      const std::vector<double>& values = r.*panel.series;
      const size_t n = values.size();
      const size_t stride = std::max<size_t>(1, n / 1200);
      std::string points;
      for (size_t k = 0; k < n; k += stride) {
        absl::StrAppendFormat(&points, "%.1f,%.1f ", kLeft + plot_w * r.series_seconds[k] / t_max,
                              y0 + kPanel - kPanel * values[k] * panel.scale / v_max);
      }
      absl::StrAppendFormat(&out,
                            "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" "
                            "points=\"%s\"/>\n",
                            kColors[i % 4], points);
      absl::StrAppendFormat(&out,
                            "<line x1=\"%.0f\" y1=\"%.0f\" x2=\"%.0f\" y2=\"%.0f\" stroke=\"%s\" "
                            "stroke-width=\"3\"/><text x=\"%.0f\" y=\"%.0f\">%s</text>\n",
                            kLeft + plot_w + 12, y0 + 16 + 18 * i, kLeft + plot_w + 32,
                            y0 + 16 + 18 * i, kColors[i % 4], kLeft + plot_w + 38,
                            y0 + 20 + 18 * i, XmlEscape(r.policy));
    }
  }
  absl::StrAppendFormat(&out, "<text x=\"%.0f\" y=\"%.0f\">simulated time</text>\n</svg>\n",
                        kLeft + plot_w / 2 - 40, height - 12);
  return out;
}

}  // namespace pagedkv::sim
