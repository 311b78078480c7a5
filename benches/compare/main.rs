//! `cargo bench --bench compare`: respipe side by side with direct Redis and twemproxy.
//!
//! Starts a private redis-server, and per simulated network distance (added RTT) a
//! latency-injecting relay in front of it, a respipe and a twemproxy (when installed) whose
//! upstream is that relay, all on free 127.0.0.1 ports. Then runs the same workloads against
//! each target, interleaved run by run (direct, twemproxy, respipe, direct, …) so machine
//! drift hits all alike: redis-benchmark tests at several client counts and pipeline depths,
//! and the task-claim workload (`taskclaim.rs`). CPU per command comes from /proc for
//! redis-server and the proxy; memory from VmRSS/VmHWM. Prints markdown tables of medians,
//! writes raw runs and PNG charts under target/bench-compare/, and with `--write` appends the
//! tables to docs/benchmarks.md and puts the charts in docs/img/.
//!
//! The relay sits where the network would: between the client and Redis for direct runs,
//! between the proxy and Redis for respipe and twemproxy, which run next to the client.

mod charts;
mod procs;
mod redisbench;
mod relay;
mod report;
mod taskclaim;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Parser;

use procs::Server;
use redisbench::Endpoint;
use relay::DelayRelay;
use report::{Run, TaskRun};

/// Command line. `cargo bench` passes `--bench` to every bench target; it is accepted and
/// ignored.
#[derive(Parser, Debug, Clone)]
#[command(name = "compare", about = "respipe vs direct Redis vs twemproxy")]
pub struct Args {
    /// Routine mode: fewer cells and shorter runs, under 2 minutes after the build.
    #[arg(long)]
    quick: bool,
    /// Append the tables to docs/benchmarks.md and write the charts to docs/img/.
    #[arg(long)]
    write: bool,
    /// Rounds of the whole matrix; cells report the median over rounds.
    #[arg(long)]
    rounds: Option<usize>,
    /// Added round-trip times in milliseconds (0 = no relay).
    #[arg(long, value_delimiter = ',')]
    rtt_ms: Option<Vec<f64>>,
    /// redis-benchmark tests.
    #[arg(long, value_delimiter = ',')]
    tests: Option<Vec<String>>,
    /// redis-benchmark client counts.
    #[arg(long, value_delimiter = ',')]
    clients: Option<Vec<usize>>,
    /// redis-benchmark pipeline depths.
    #[arg(long, value_delimiter = ',')]
    pipelines: Option<Vec<usize>>,
    /// Seconds each redis-benchmark run should last (sets -n from the expected rate).
    #[arg(long)]
    run_secs: Option<f64>,
    /// Seconds of each task-claim run.
    #[arg(long)]
    taskclaim_secs: Option<f64>,
    /// Task-claim workers.
    #[arg(long, default_value_t = 64)]
    workers: usize,
    /// Task-claim client-side pool sizes.
    #[arg(long, value_delimiter = ',', default_value = "10,64")]
    pools: Vec<usize>,
    /// Extra respipe flags, as one string ("--batch-window-us 50").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    respipe_args: String,
    /// Leave twemproxy out even when installed.
    #[arg(long)]
    no_twemproxy: bool,
    /// Also run redis-benchmark against each proxy on a unix socket ("respipe unix",
    /// "twemproxy unix"), as a sidecar can be reached. The targets stay judged on TCP.
    #[arg(long)]
    unix: bool,
    #[arg(long, hide = true)]
    bench: bool,
}

/// The settings a run actually used, after --quick defaults.
pub struct Plan {
    pub rounds: usize,
    pub rtts: Vec<f64>,
    pub tests: Vec<String>,
    pub clients: Vec<usize>,
    pub pipelines: Vec<usize>,
    pub run_secs: f64,
    pub taskclaim_secs: f64,
    pub workers: usize,
    pub pools: Vec<usize>,
}

impl Plan {
    fn from(a: &Args) -> Plan {
        let q = a.quick;
        let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        Plan {
            rounds: a.rounds.unwrap_or(if q { 1 } else { 3 }),
            rtts: a.rtt_ms.clone().unwrap_or(if q {
                vec![0.0, 1.0]
            } else {
                vec![0.0, 0.2, 1.0]
            }),
            tests: a.tests.clone().unwrap_or_else(|| {
                if q {
                    strs(&["set", "get"])
                } else {
                    strs(&["set", "get", "incr", "lpush", "hset"])
                }
            }),
            clients: a
                .clients
                .clone()
                .unwrap_or(if q { vec![1, 50] } else { vec![1, 50, 500] }),
            pipelines: a
                .pipelines
                .clone()
                .unwrap_or(if q { vec![1] } else { vec![1, 16] }),
            run_secs: a.run_secs.unwrap_or(if q { 0.6 } else { 1.2 }),
            taskclaim_secs: a.taskclaim_secs.unwrap_or(if q { 1.5 } else { 3.0 }),
            workers: a.workers,
            pools: a.pools.clone(),
        }
    }
}

/// The targets at one distance.
struct Site {
    rtt_ms: f64,
    measured_rtt_ms: f64,
    direct_port: u16,
    respipe: Server,
    twemproxy: Option<Server>,
    /// The proxies' unix sockets, with `--unix`.
    respipe_unix: Option<PathBuf>,
    twemproxy_unix: Option<PathBuf>,
}

impl Site {
    /// The TCP targets: every workload runs against these.
    fn targets(&self) -> Vec<(&'static str, u16)> {
        let mut t = vec![("direct", self.direct_port)];
        if let Some(tw) = &self.twemproxy {
            t.push(("twemproxy", tw.port));
        }
        t.push(("respipe", self.respipe.port));
        t
    }

    /// The redis-benchmark targets: the TCP ones, then the proxies' unix sockets.
    fn bench_targets(&self) -> Vec<(&'static str, Endpoint)> {
        let mut t: Vec<(&'static str, Endpoint)> = self
            .targets()
            .into_iter()
            .map(|(name, port)| (name, Endpoint::Tcp(port)))
            .collect();
        if let (Some(_), Some(path)) = (&self.twemproxy, &self.twemproxy_unix) {
            t.push(("twemproxy unix", Endpoint::Unix(path.clone())));
        }
        if let Some(path) = &self.respipe_unix {
            t.push(("respipe unix", Endpoint::Unix(path.clone())));
        }
        t
    }

    fn proxy(&self, target: &str) -> Option<&Server> {
        match target {
            "respipe" | "respipe unix" => Some(&self.respipe),
            "twemproxy" | "twemproxy unix" => self.twemproxy.as_ref(),
            _ => None,
        }
    }
}

fn main() {
    let args = Args::parse();
    if let Err(e) = run(args) {
        eprintln!("compare: {e}");
        std::process::exit(1);
    }
}

fn raise_fd_limit(want: u64) {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = want.min(lim.rlim_max);
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// requests for a run of about `secs`, from a rough expected rate: a client with P commands
/// in flight completes P per round trip, and the machine tops out near 80k round trips/s.
fn requests_for(plan: &Plan, rtt_ms: f64, clients: usize, pipeline: usize) -> u64 {
    let rt_per_s = 1.0 / (rtt_ms / 1000.0 + 60e-6);
    let expected = (clients as f64 * rt_per_s).min(80_000.0) * pipeline as f64;
    let per_client_floor = (clients * pipeline * 20) as f64;
    (expected * plan.run_secs)
        .max(per_client_floor)
        .max(1000.0)
        .round() as u64
}

fn run(args: Args) -> Result<(), String> {
    let plan = Plan::from(&args);
    let started = Instant::now();
    for tool in ["redis-server", "redis-benchmark", "timeout"] {
        if which(tool).is_none() {
            return Err(format!(
                "{tool} not found (apt-get install redis-server redis-tools)"
            ));
        }
    }
    let nutcracker = if args.no_twemproxy {
        None
    } else {
        procs::nutcracker_path()
    };
    if nutcracker.is_none() && !args.no_twemproxy {
        eprintln!(
            "compare: nutcracker not installed (apt-get install nutcracker); twemproxy left out"
        );
    }
    let respipe_bin = PathBuf::from(env!("CARGO_BIN_EXE_respipe"));
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let out_dir = root.join("target/bench-compare");
    let work = out_dir.join(format!("work-{}", std::process::id()));
    std::fs::create_dir_all(&work).map_err(|e| format!("{}: {e}", work.display()))?;
    raise_fd_limit(16_384);
    let respipe_extra: Vec<String> = args
        .respipe_args
        .split_whitespace()
        .map(str::to_string)
        .collect();

    let io = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("relay")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let load_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("taskclaim")
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;

    let mut redis = procs::redis_server(&work)?;
    load_rt
        .block_on(taskclaim::populate(redis.port))
        .map_err(|e| format!("populating task hashes: {e}"))?;

    let mut sites = Vec::new();
    let mut relays = Vec::new();
    for (i, &rtt) in plan.rtts.iter().enumerate() {
        let upstream = if rtt > 0.0 {
            let r = DelayRelay::start(&io, redis.port, Duration::from_secs_f64(rtt / 1000.0))
                .map_err(|e| format!("relay: {e}"))?;
            let port = r.port;
            relays.push(r);
            port
        } else {
            redis.port
        };
        let measured = relay::measure_rtt(upstream, 200)
            .map_err(|e| format!("measuring RTT: {e}"))?
            .as_secs_f64()
            * 1000.0;
        let tag = format!("rtt{i}");
        let sock = |name: &str| args.unix.then(|| work.join(format!("{name}-{tag}.sock")));
        let (respipe_unix, twemproxy_unix) = (sock("respipe"), sock("twemproxy"));
        let respipe = procs::respipe(
            &respipe_bin,
            upstream,
            &respipe_extra,
            &work,
            &tag,
            respipe_unix.as_deref(),
        )?;
        let twemproxy = match &nutcracker {
            Some(bin) => Some(procs::twemproxy(
                bin,
                upstream,
                &work,
                &tag,
                twemproxy_unix.as_deref(),
            )?),
            None => None,
        };
        eprintln!(
            "compare: added RTT {rtt} ms (PING through it: {measured:.3} ms): direct :{upstream}, \
             respipe :{}, twemproxy {}",
            respipe.port,
            twemproxy
                .as_ref()
                .map_or("-".to_string(), |t| format!(":{}", t.port))
        );
        sites.push(Site {
            rtt_ms: rtt,
            measured_rtt_ms: measured,
            direct_port: upstream,
            respipe,
            twemproxy,
            respipe_unix,
            twemproxy_unix,
        });
    }

    // Memory with 1,000 idle clients, on the zero-distance proxies before any load.
    let idle_rss = measure_idle_rss(&sites[0], 1000)?;
    for (name, rss) in &idle_rss {
        eprintln!(
            "compare: {name} RSS with 1000 idle clients: {:.1} MiB",
            *rss as f64 / 1048576.0
        );
    }

    let load_avg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut runs: Vec<Run> = Vec::new();
    let mut task_runs: Vec<TaskRun> = Vec::new();
    let timeout = Duration::from_secs(120);
    for round in 1..=plan.rounds {
        for site in &mut sites {
            for &clients in &plan.clients {
                for &pipeline in &plan.pipelines {
                    for test in &plan.tests {
                        let spec = redisbench::Spec {
                            test: test.clone(),
                            clients,
                            pipeline,
                            requests: requests_for(&plan, site.rtt_ms, clients, pipeline),
                        };
                        for (target, at) in site.bench_targets() {
                            let proxy = site.proxy(target);
                            let r0 = redis.cpu_seconds();
                            let p0 = proxy.map_or(procs::Cpu::default(), Server::cpu);
                            let c0 = procs::children_cpu();
                            let t0 = Instant::now();
                            let m = redisbench::run(&at, &spec, timeout)?;
                            let wall = t0.elapsed().as_secs_f64();
                            let client = procs::children_cpu().since(c0);
                            let proxy_cpu =
                                proxy.map_or(procs::Cpu::default(), |p| p.cpu().since(p0));
                            let run = Run {
                                round,
                                rtt_ms: site.rtt_ms,
                                target,
                                test: test.clone(),
                                clients,
                                pipeline,
                                requests: spec.requests,
                                m,
                                redis_cpu: redis.cpu_seconds() - r0,
                                proxy_cpu: proxy_cpu.total(),
                                proxy_sys: proxy_cpu.sys,
                                client_cpu: client.total(),
                                wall,
                            };
                            eprintln!("compare: {}", run.line());
                            runs.push(run);
                        }
                    }
                }
            }
            check_alive(&mut redis, site)?;
            task_claim(&plan, round, site, &mut redis, &load_rt, &mut task_runs)?;
            check_alive(&mut redis, site)?;
        }
    }

    // Peak memory over everything the zero-distance proxies served (-c 500 included).
    let peak_rss: Vec<(&str, u64)> = sites[0]
        .targets()
        .iter()
        .filter_map(|(t, _)| sites[0].proxy(t).map(|p| (*t, p.rss().1)))
        .collect();

    let env = report::Environment {
        date: utc_now(),
        kernel: procs::version_of("uname", "-r"),
        cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu_model: cpu_model(),
        redis: procs::version_of("redis-server", "--version"),
        twemproxy: nutcracker
            .as_ref()
            .map(|b| procs::version_of(&b.to_string_lossy(), "--version"))
            .unwrap_or_else(|| "not installed".into()),
        respipe: git_describe(&root),
        respipe_args: args.respipe_args.clone(),
        command: command_line(),
        load_avg: load_avg
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        measured_rtts: sites
            .iter()
            .map(|s| (s.rtt_ms, s.measured_rtt_ms))
            .collect(),
        duration: started.elapsed(),
    };
    let tables = report::markdown(&env, &plan, &runs, &task_runs, &idle_rss, &peak_rss);
    println!("{tables}");
    std::fs::write(out_dir.join("runs.tsv"), report::tsv(&runs, &task_runs))
        .map_err(|e| e.to_string())?;
    let chart_dir = if args.write {
        root.join("docs/img")
    } else {
        out_dir.clone()
    };
    let charts = charts::charts(&chart_dir, &runs, &task_runs)?;
    for c in &charts {
        eprintln!("compare: chart {}", c.display());
    }
    if args.write {
        let doc = root.join("docs/benchmarks.md");
        let mut text = std::fs::read_to_string(&doc).unwrap_or_default();
        text.push('\n');
        text.push_str(&tables);
        for c in &charts {
            let rel = c.strip_prefix(root.join("docs")).unwrap_or(c);
            text.push_str(&format!("\n![{}]({})\n", rel.display(), rel.display()));
        }
        std::fs::write(&doc, text).map_err(|e| e.to_string())?;
        eprintln!("compare: appended to docs/benchmarks.md");
    }
    drop(sites);
    let _ = std::fs::remove_dir_all(&work);
    eprintln!("compare: done in {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn check_alive(redis: &mut Server, site: &mut Site) -> Result<(), String> {
    let mut all = vec![redis];
    all.push(&mut site.respipe);
    if let Some(t) = site.twemproxy.as_mut() {
        all.push(t);
    }
    for s in all {
        if !s.alive() {
            return Err(format!(
                "{} (port {}) exited during the run",
                s.name, s.port
            ));
        }
    }
    Ok(())
}

/// Closed loop per (pool, target), then an open loop at one common offered rate: half the
/// slowest closed-loop throughput seen at this distance, which every target can sustain, so
/// their latency distributions compare at equal load.
#[allow(clippy::too_many_arguments)]
fn task_claim(
    plan: &Plan,
    round: usize,
    site: &Site,
    redis: &mut Server,
    rt: &tokio::runtime::Runtime,
    out: &mut Vec<TaskRun>,
) -> Result<(), String> {
    let duration = Duration::from_secs_f64(plan.taskclaim_secs);
    let mut slowest = f64::INFINITY;
    for open in [false, true] {
        let rate = open.then(|| slowest / 2.0 / 2.0); // commands/s → tasks/s, at half load
        for &pool in &plan.pools {
            for (target, port) in site.targets() {
                let load = taskclaim::Load {
                    workers: plan.workers,
                    pool,
                    duration,
                    rate,
                };
                let proxy = site.proxy(target);
                let r0 = redis.cpu_seconds();
                let p0 = proxy.map_or(0.0, Server::cpu_seconds);
                let o = rt
                    .block_on(taskclaim::run(port, load))
                    .map_err(|e| format!("task-claim against {target}: {e}"))?;
                let run = TaskRun {
                    round,
                    rtt_ms: site.rtt_ms,
                    target,
                    pool,
                    workers: plan.workers,
                    rate,
                    redis_cpu: redis.cpu_seconds() - r0,
                    proxy_cpu: proxy.map_or(0.0, |p| p.cpu_seconds() - p0),
                    outcome: o,
                };
                eprintln!("compare: {}", run.line());
                if !open {
                    slowest = slowest.min(run.outcome.ops());
                }
                out.push(run);
            }
        }
    }
    Ok(())
}

/// Opens `n` connections to each proxy, makes sure each is served (PING), and reads RSS.
fn measure_idle_rss(site: &Site, n: usize) -> Result<Vec<(&'static str, u64)>, String> {
    use std::io::{Read, Write};
    let mut out = Vec::new();
    for (target, port) in site.targets() {
        let Some(proxy) = site.proxy(target) else {
            continue;
        };
        let mut conns = Vec::with_capacity(n);
        for _ in 0..n {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
                .map_err(|e| format!("idle client to {target}: {e}"))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))
                .map_err(|e| e.to_string())?;
            s.write_all(procs::PING).map_err(|e| e.to_string())?;
            conns.push(s);
        }
        for s in &mut conns {
            let mut buf = [0u8; 7];
            s.read_exact(&mut buf)
                .map_err(|e| format!("idle client PING via {target}: {e}"))?;
        }
        std::thread::sleep(Duration::from_millis(300));
        out.push((target, proxy.rss().0));
    }
    Ok(out)
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(tool))
            .find(|p| p.exists())
    })
}

fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn git_describe(root: &Path) -> String {
    let rev = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let dirty = std::process::Command::new("git")
        .arg("-C")
        .arg(root)
        .args([
            "status",
            "--porcelain",
            "--",
            "src",
            "Cargo.toml",
            "Cargo.lock",
        ])
        .output()
        .map(|o| !o.stdout.is_empty())
        .unwrap_or(false);
    if dirty {
        format!("{rev} + uncommitted changes")
    } else {
        rev
    }
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.is_empty() {
        "cargo bench --bench compare".into()
    } else {
        format!("cargo bench --bench compare -- {}", args.join(" "))
    }
}
