//! Medians over rounds, the markdown tables, the target checks and the PNG charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use crate::redisbench::Measured;
use crate::taskclaim::Outcome;
use crate::Plan;

/// One redis-benchmark run against one target.
pub struct Run {
    pub round: usize,
    pub rtt_ms: f64,
    pub target: &'static str,
    pub test: String,
    pub clients: usize,
    pub pipeline: usize,
    pub requests: u64,
    pub m: Measured,
    pub redis_cpu: f64,
    pub proxy_cpu: f64,
    /// The kernel part of `proxy_cpu` (stime).
    pub proxy_sys: f64,
    /// redis-benchmark's own CPU seconds.
    pub client_cpu: f64,
    pub wall: f64,
}

impl Run {
    pub fn line(&self) -> String {
        format!(
            "round {} rtt {} ms {:>4} -c {:<3} -P {:<2} {:<14} {:>10.0} ops/s p50 {:.3} p99 {:.3} ms  client {:.2} redis {:.2} proxy {:.2} (kernel {:.2}) µs/cmd",
            self.round,
            self.rtt_ms,
            self.test,
            self.clients,
            self.pipeline,
            self.target,
            self.m.ops,
            self.m.p50_ms,
            self.m.p99_ms,
            per_cmd_us(self.client_cpu, self.requests),
            per_cmd_us(self.redis_cpu, self.requests),
            per_cmd_us(self.proxy_cpu, self.requests),
            per_cmd_us(self.proxy_sys, self.requests),
        )
    }
}

/// One task-claim run against one target.
pub struct TaskRun {
    pub round: usize,
    pub rtt_ms: f64,
    pub target: &'static str,
    pub pool: usize,
    pub workers: usize,
    /// Offered tasks/s (open loop) or None (closed loop).
    pub rate: Option<f64>,
    pub redis_cpu: f64,
    pub proxy_cpu: f64,
    pub outcome: Outcome,
}

impl TaskRun {
    pub fn line(&self) -> String {
        format!(
            "round {} rtt {} ms task-claim {} pool {:<2} {:<9} {:>10.0} cmd/s p50 {:.3} p99 {:.3} p99.9 {:.3} ms errors {}",
            self.round,
            self.rtt_ms,
            self.rate.map_or("closed".to_string(), |r| format!("open@{:.0}/s", r * 2.0)),
            self.pool,
            self.target,
            self.outcome.ops(),
            self.outcome.ms(0.5),
            self.outcome.ms(0.99),
            self.outcome.ms(0.999),
            self.outcome.errors,
        )
    }
}

/// What the report header says about the machine and the run.
pub struct Environment {
    pub date: String,
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    pub redis: String,
    pub twemproxy: String,
    pub respipe: String,
    pub respipe_args: String,
    pub command: String,
    pub load_avg: String,
    pub measured_rtts: Vec<(f64, f64)>,
    pub duration: Duration,
}

fn per_cmd_us(cpu_s: f64, commands: u64) -> f64 {
    if commands == 0 {
        return f64::NAN;
    }
    cpu_s / commands as f64 * 1e6
}

fn median(mut v: Vec<f64>) -> f64 {
    v.retain(|x| !x.is_nan());
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Key of a redis-benchmark cell; rtt in µs so it orders and compares exactly.
type CellKey = (u64, String, usize, usize, &'static str);

/// The median of one redis-benchmark cell over rounds.
#[derive(Clone, Copy, Default)]
pub struct Cell {
    pub ops: f64,
    pub p50: f64,
    pub p99: f64,
    pub redis_us: f64,
    pub proxy_us: f64,
    pub proxy_sys_us: f64,
    pub client_us: f64,
}

fn rtt_key(ms: f64) -> u64 {
    (ms * 1000.0).round() as u64
}

fn cells(runs: &[Run]) -> BTreeMap<CellKey, Cell> {
    let mut groups: BTreeMap<CellKey, Vec<&Run>> = BTreeMap::new();
    for r in runs {
        let key = (
            rtt_key(r.rtt_ms),
            r.test.clone(),
            r.clients,
            r.pipeline,
            r.target,
        );
        groups.entry(key).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|(k, rs)| {
            let m = |f: &dyn Fn(&Run) -> f64| median(rs.iter().map(|r| f(r)).collect());
            let cell = Cell {
                ops: m(&|r| r.m.ops),
                p50: m(&|r| r.m.p50_ms),
                p99: m(&|r| r.m.p99_ms),
                redis_us: m(&|r| per_cmd_us(r.redis_cpu, r.requests)),
                proxy_us: m(&|r| per_cmd_us(r.proxy_cpu, r.requests)),
                proxy_sys_us: m(&|r| per_cmd_us(r.proxy_sys, r.requests)),
                client_us: m(&|r| per_cmd_us(r.client_cpu, r.requests)),
            };
            (k, cell)
        })
        .collect()
}

/// Key of a task-claim cell: (rtt µs, open loop, pool, target).
type TaskKey = (u64, bool, usize, &'static str);

/// Task-claim medians over rounds.
pub struct TaskCell {
    pub ops: f64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub rate: f64,
    pub errors: u64,
    pub redis_us: f64,
    pub proxy_us: f64,
}

fn task_cells(runs: &[TaskRun]) -> BTreeMap<TaskKey, TaskCell> {
    let mut groups: BTreeMap<TaskKey, Vec<&TaskRun>> = BTreeMap::new();
    for r in runs {
        groups
            .entry((rtt_key(r.rtt_ms), r.rate.is_some(), r.pool, r.target))
            .or_default()
            .push(r);
    }
    groups
        .into_iter()
        .map(|(k, rs)| {
            let m = |f: &dyn Fn(&TaskRun) -> f64| median(rs.iter().map(|r| f(r)).collect());
            let cell = TaskCell {
                ops: m(&|r| r.outcome.ops()),
                p50: m(&|r| r.outcome.ms(0.5)),
                p99: m(&|r| r.outcome.ms(0.99)),
                p999: m(&|r| r.outcome.ms(0.999)),
                rate: m(&|r| r.rate.map_or(f64::NAN, |x| x * 2.0)),
                errors: rs.iter().map(|r| r.outcome.errors).sum(),
                redis_us: m(&|r| per_cmd_us(r.redis_cpu, r.outcome.commands)),
                proxy_us: m(&|r| per_cmd_us(r.proxy_cpu, r.outcome.commands)),
            };
            (k, cell)
        })
        .collect()
}

fn fmt_ms(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.3}")
    }
}

fn fmt_ratio(v: f64) -> String {
    if v.is_nan() || v.is_infinite() {
        "–".into()
    } else {
        format!("{v:.2}×")
    }
}

fn fmt_us(v: f64) -> String {
    if v.is_nan() {
        "–".into()
    } else {
        format!("{v:.2}")
    }
}

fn fmt_ops(v: f64) -> String {
    if v.is_nan() || v.is_infinite() {
        return "–".into();
    }
    let s = format!("{:.0}", v);
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

/// The whole report, as markdown.
pub fn markdown(
    env: &Environment,
    plan: &Plan,
    runs: &[Run],
    task_runs: &[TaskRun],
    idle_rss: &[(&str, u64)],
    peak_rss: &[(&str, u64)],
) -> String {
    let cells = cells(runs);
    let tasks = task_cells(task_runs);
    let mut s = String::new();
    let _ = writeln!(s, "### {} — `{}`\n", env.date, env.command);
    let _ = writeln!(
        s,
        "- machine: {} × {}, kernel `{}`; load average before the runs {}",
        env.cpus, env.cpu_model, env.kernel, env.load_avg
    );
    let _ = writeln!(
        s,
        "- {}; {}; respipe commit {}{}",
        env.redis,
        env.twemproxy,
        env.respipe,
        if env.respipe_args.is_empty() {
            String::new()
        } else {
            format!(", flags `{}`", env.respipe_args)
        }
    );
    let rtts: Vec<String> = env
        .measured_rtts
        .iter()
        .map(|(want, got)| format!("{want} ms added → PING {got:.3} ms"))
        .collect();
    let _ = writeln!(
        s,
        "- distance (median PING round trip to Redis through the relay): {}",
        rtts.join("; ")
    );
    let _ = writeln!(
        s,
        "- {} round(s), targets interleaved run by run; redis-benchmark runs sized for ~{} s; \
         task-claim {} workers, {} s per run; whole run {:.0} s",
        plan.rounds,
        plan.run_secs,
        plan.workers,
        plan.taskclaim_secs,
        env.duration.as_secs_f64()
    );
    let _ = writeln!(s);

    // Targets first: the reason the table exists.
    let _ = writeln!(s, "#### Targets\n");
    let _ = writeln!(s, "| target | measured | met |");
    let _ = writeln!(s, "|---|---|---|");
    for row in target_checks(&cells, &tasks, idle_rss, peak_rss) {
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            row.0,
            row.1,
            if row.2 { "yes" } else { "**no**" }
        );
    }
    let _ = writeln!(s);

    let _ = writeln!(s, "#### redis-benchmark (medians over rounds)\n");
    let _ = writeln!(
        s,
        "| added RTT | test | -c | -P | target | ops/s | p50 ms | p99 ms | × direct | × twemproxy \
         | client CPU µs/cmd | redis-server CPU µs/cmd | proxy CPU µs/cmd | proxy kernel µs/cmd \
         | all three µs/cmd |"
    );
    let _ = writeln!(
        s,
        "|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut keys: Vec<&CellKey> = cells.keys().collect();
    let order = |t: &str| match t {
        "direct" => 0,
        "twemproxy" => 1,
        "respipe" => 2,
        "twemproxy unix" => 3,
        _ => 4,
    };
    let test_order = |t: &str| plan.tests.iter().position(|x| x == t).unwrap_or(99);
    keys.sort_by_key(|k| (k.0, k.2, k.3, test_order(&k.1), order(k.4)));
    for k in keys {
        let c = cells[k];
        let other = |t: &'static str| {
            cells
                .get(&(k.0, k.1.clone(), k.2, k.3, t))
                .map_or(f64::NAN, |o| c.ops / o.ops)
        };
        // Each respipe beside the twemproxy reached the same way.
        let (xd, xt) = match k.4 {
            "direct" => (f64::NAN, f64::NAN),
            "respipe" => (other("direct"), other("twemproxy")),
            "respipe unix" => (other("direct"), other("twemproxy unix")),
            _ => (other("direct"), f64::NAN),
        };
        let proxied = k.4 != "direct";
        let dash = |v: f64| if proxied { fmt_us(v) } else { "–".into() };
        let all = c.client_us + c.redis_us + if proxied { c.proxy_us } else { 0.0 };
        let _ = writeln!(
            s,
            "| {} ms | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            k.0 as f64 / 1000.0,
            k.1.to_uppercase(),
            k.2,
            k.3,
            k.4,
            fmt_ops(c.ops),
            fmt_ms(c.p50),
            fmt_ms(c.p99),
            fmt_ratio(xd),
            fmt_ratio(xt),
            fmt_us(c.client_us),
            fmt_us(c.redis_us),
            dash(c.proxy_us),
            dash(c.proxy_sys_us),
            fmt_us(all),
        );
    }
    let _ = writeln!(
        s,
        "\nCPU µs/cmd: utime+stime from /proc/<pid>/stat over the run (redis-benchmark's from \
         getrusage of the harness's children), divided by its requests (10 ms clock ticks). \
         Proxy kernel: its stime alone. All three: client + redis-server + proxy, the CPU the \
         machine spent per command; its cores divided by this bounds the ops/s. × columns: ratio \
         of ops/s medians in the same cell; a `unix` target is a proxy reached on a unix socket \
         (its × twemproxy is against twemproxy on a unix socket).\n"
    );

    let _ = writeln!(
        s,
        "#### task-claim: HGET then HSET per task, one command per round trip\n"
    );
    let _ = writeln!(
        s,
        "| added RTT | target | client pool | closed loop cmd/s | × direct pool 10 | p50 ms | p99 ms \
         | p99.9 ms | open loop: offered cmd/s | p50 ms | p99 ms | p99.9 ms | errors \
         | redis-server CPU µs/cmd | proxy CPU µs/cmd |"
    );
    let _ = writeln!(
        s,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    let mut tkeys: Vec<&TaskKey> = tasks.keys().filter(|k| !k.1).collect();
    tkeys.sort_by_key(|k| (k.0, k.2, order(k.3)));
    for k in tkeys {
        let c = &tasks[k];
        let open = tasks.get(&(k.0, true, k.2, k.3));
        let base = tasks
            .get(&(k.0, false, 10, "direct"))
            .map_or(f64::NAN, |d| c.ops / d.ops);
        let _ = writeln!(
            s,
            "| {} ms | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            k.0 as f64 / 1000.0,
            k.3,
            k.2,
            fmt_ops(c.ops),
            if k.3 == "direct" && k.2 == 10 {
                "–".into()
            } else {
                fmt_ratio(base)
            },
            fmt_ms(c.p50),
            fmt_ms(c.p99),
            fmt_ms(c.p999),
            open.map_or("–".into(), |o| fmt_ops(o.rate)),
            open.map_or("–".into(), |o| fmt_ms(o.p50)),
            open.map_or("–".into(), |o| fmt_ms(o.p99)),
            open.map_or("–".into(), |o| fmt_ms(o.p999)),
            c.errors + open.map_or(0, |o| o.errors),
            fmt_us(c.redis_us),
            if k.3 == "direct" {
                "–".into()
            } else {
                fmt_us(c.proxy_us)
            },
        );
    }
    let _ = writeln!(
        s,
        "\nLatency per command, from the moment the worker wanted to send it (pool wait included). \
         Open loop: every target offered the same schedule, half the slowest closed-loop rate at \
         that distance; an HGET is timed from its scheduled start (no coordinated omission).\n"
    );

    let _ = writeln!(s, "#### Memory (proxies at zero added RTT)\n");
    let _ = writeln!(
        s,
        "| proxy | RSS, 1,000 idle clients | peak RSS over the whole run{} |",
        if plan.clients.contains(&500) {
            " (incl. -c 500)"
        } else {
            ""
        }
    );
    let _ = writeln!(s, "|---|---:|---:|");
    for (name, idle) in idle_rss {
        let peak = peak_rss.iter().find(|(n, _)| n == name).map_or(0, |p| p.1);
        let _ = writeln!(s, "| {name} | {} | {} |", mib(*idle), mib(peak));
    }
    s
}

/// (target, what was measured, met?) for each target of the performance issue that the run
/// has the cells for.
fn target_checks(
    cells: &BTreeMap<CellKey, Cell>,
    tasks: &BTreeMap<TaskKey, TaskCell>,
    idle_rss: &[(&str, u64)],
    peak_rss: &[(&str, u64)],
) -> Vec<(String, String, bool)> {
    let mut out = Vec::new();
    let get = |test: &str, c: usize, t: &'static str| cells.get(&(0, test.to_string(), c, 1, t));
    for test in ["set", "get"] {
        let (Some(d), Some(r)) = (get(test, 50, "direct"), get(test, 50, "respipe")) else {
            continue;
        };
        let t = get(test, 50, "twemproxy");
        let up = test.to_uppercase();
        out.push((
            format!("`-c 50 -P 1` {up}: respipe ≥ 1.0× direct ops/s"),
            format!(
                "{} vs {} ops/s = {}",
                fmt_ops(r.ops),
                fmt_ops(d.ops),
                fmt_ratio(r.ops / d.ops)
            ),
            r.ops >= d.ops,
        ));
        if let Some(t) = t {
            out.push((
                format!("`-c 50 -P 1` {up}: respipe ≥ 1.25× twemproxy ops/s"),
                format!(
                    "{} vs {} = {}",
                    fmt_ops(r.ops),
                    fmt_ops(t.ops),
                    fmt_ratio(r.ops / t.ops)
                ),
                r.ops >= 1.25 * t.ops,
            ));
            out.push((
                format!("`-c 50 -P 1` {up}: respipe CPU/cmd ≤ 0.6× twemproxy's"),
                format!(
                    "{:.2} vs {:.2} µs = {} (respipe's kernel part alone: {:.2} µs = {})",
                    r.proxy_us,
                    t.proxy_us,
                    fmt_ratio(r.proxy_us / t.proxy_us),
                    r.proxy_sys_us,
                    fmt_ratio(r.proxy_sys_us / t.proxy_us)
                ),
                r.proxy_us <= 0.6 * t.proxy_us,
            ));
        }
        out.push((
            format!("`-c 50 -P 1` {up}: redis-server CPU/cmd behind respipe ≤ 0.3× direct"),
            format!(
                "{:.2} vs {:.2} µs = {}",
                r.redis_us,
                d.redis_us,
                fmt_ratio(r.redis_us / d.redis_us)
            ),
            r.redis_us <= 0.3 * d.redis_us,
        ));
        if let (Some(d1), Some(r1), Some(t1)) = (
            get(test, 1, "direct"),
            get(test, 1, "respipe"),
            get(test, 1, "twemproxy"),
        ) {
            let (ar, at) = (r1.p50 - d1.p50, t1.p50 - d1.p50);
            out.push((
                format!("`-c 1` {up}: respipe added p50 ≤ twemproxy's"),
                format!("+{ar:.3} ms vs +{at:.3} ms"),
                ar <= at + 1e-9,
            ));
        }
    }
    // Task-claim at 1 ms, against direct with the pool of 10.
    let at = |rtt: u64, pool: usize, t: &'static str| tasks.get(&(rtt, false, pool, t));
    if let Some(d) = at(1000, 10, "direct") {
        let pools: Vec<usize> = tasks
            .keys()
            .filter(|k| k.0 == 1000 && k.3 == "respipe" && !k.1)
            .map(|k| k.2)
            .collect();
        for pool in pools {
            let Some(r) = at(1000, pool, "respipe") else {
                continue;
            };
            out.push((
                format!("task-claim 1 ms, respipe client pool {pool}: ≥ 8× direct (pool 10) ops/s"),
                format!(
                    "{} vs {} = {}",
                    fmt_ops(r.ops),
                    fmt_ops(d.ops),
                    fmt_ratio(r.ops / d.ops)
                ),
                r.ops >= 8.0 * d.ops,
            ));
            out.push((
                format!("task-claim 1 ms, respipe client pool {pool}: p99 ≤ 4 ms"),
                format!("{:.3} ms", r.p99),
                r.p99 <= 4.0,
            ));
            if let Some(r0) = at(0, pool, "respipe") {
                out.push((
                    format!("task-claim, respipe client pool {pool}: ops at 1 ms ≥ 0.8× at 0 ms"),
                    format!(
                        "{} vs {} = {}",
                        fmt_ops(r.ops),
                        fmt_ops(r0.ops),
                        fmt_ratio(r.ops / r0.ops)
                    ),
                    r.ops >= 0.8 * r0.ops,
                ));
            }
        }
    }
    if let Some((_, b)) = idle_rss.iter().find(|(n, _)| *n == "respipe") {
        out.push((
            "respipe RSS with 1,000 idle clients ≤ 30 MiB".into(),
            mib(*b),
            *b <= 30 << 20,
        ));
    }
    let under_500 = cells.keys().any(|k| k.2 == 500 && k.4 == "respipe");
    if let Some((_, b)) = peak_rss.iter().find(|(n, _)| *n == "respipe" && under_500) {
        out.push((
            "respipe peak RSS under the `-c 500` load ≤ 100 MiB".into(),
            mib(*b),
            *b <= 100 << 20,
        ));
    }
    out
}

/// Every run, one per line, for re-analysis.
pub fn tsv(runs: &[Run], task_runs: &[TaskRun]) -> String {
    let mut s = String::from(
        "kind\tround\trtt_ms\ttarget\ttest\tclients\tpipeline\trequests\tops\tp50_ms\tp99_ms\tredis_cpu_s\tproxy_cpu_s\twall_s\tproxy_sys_s\tclient_cpu_s\n",
    );
    for r in runs {
        let _ = writeln!(
            s,
            "bench\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{:.1}\t{}\t{}\t{:.3}\t{:.3}\t{:.3}\t{:.3}\t{:.3}",
            r.round,
            r.rtt_ms,
            r.target,
            r.test,
            r.clients,
            r.pipeline,
            r.requests,
            r.m.ops,
            r.m.p50_ms,
            r.m.p99_ms,
            r.redis_cpu,
            r.proxy_cpu,
            r.wall,
            r.proxy_sys,
            r.client_cpu
        );
    }
    for r in task_runs {
        let _ =
            writeln!(
            s,
            "taskclaim-{}\t{}\t{}\t{}\tpool{}\t{}\t1\t{}\t{:.1}\t{:.3}\t{:.3}\t{:.3}\t{:.3}\t{:.3}",
            if r.rate.is_some() { "open" } else { "closed" },
            r.round, r.rtt_ms, r.target, r.pool, r.workers, r.outcome.commands, r.outcome.ops(),
            r.outcome.ms(0.5), r.outcome.ms(0.99), r.redis_cpu, r.proxy_cpu,
            r.outcome.elapsed.as_secs_f64()
        );
    }
    s
}
