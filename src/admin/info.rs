//! `RESPIPE INFO`: the same figures as `/metrics`, in Redis's INFO format, so
//! `redis-cli -p 6380 RESPIPE INFO` works without Prometheus.

use crate::upstream::Router;

/// Renders the metrics as INFO text: a header section, then one `name{labels}:value` line
/// per Prometheus sample (histograms as their `_bucket`, `_sum` and `_count` samples).
pub fn render(router: &Router, version: &str) -> String {
    router.refresh_gauges();
    let m = router.metrics();
    let mut out = String::with_capacity(16 * 1024);
    out.push_str("# respipe\r\n");
    out.push_str(&format!("respipe_version:{version}\r\n"));
    out.push_str(&format!("uptime_in_seconds:{}\r\n", m.uptime()));
    out.push_str(&format!(
        "upstream_ready:{}\r\n",
        u8::from(router.is_ready())
    ));
    out.push_str(&format!(
        "command_metrics:{}\r\n",
        if m.enabled() { "on" } else { "off" }
    ));
    out.push_str("\r\n# metrics\r\n");
    for line in m.render().lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        // "name{labels} value" -> "name{labels}:value"
        if let Some((name, value)) = line.rsplit_once(' ') {
            out.push_str(name);
            out.push(':');
            out.push_str(value);
            out.push_str("\r\n");
        }
    }
    out
}
