//! The processes under test: redis-server, respipe and twemproxy (nutcracker), each on a
//! free 127.0.0.1 port, and what `/proc` says about them (CPU time, resident memory).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process killed when dropped, so an early error never leaves servers behind.
pub struct Server {
    pub name: &'static str,
    pub port: u16,
    child: Child,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True while the process is running; a target that died mid-run must fail the run.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// CPU seconds (utime + stime) the process has used so far.
    pub fn cpu_seconds(&self) -> f64 {
        self.cpu().total()
    }

    /// CPU seconds so far, user and kernel apart.
    pub fn cpu(&self) -> Cpu {
        cpu_split(self.pid()).unwrap_or(Cpu::UNKNOWN)
    }

    /// (current, peak) resident set size in bytes, from /proc/<pid>/status.
    pub fn rss(&self) -> (u64, u64) {
        rss(self.pid()).unwrap_or((0, 0))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// PING as a RESP array: twemproxy closes connections that send inline commands.
pub const PING: &[u8] = b"*1\r\n$4\r\nPING\r\n";

/// A port nothing listens on right now. Racy by nature, as every free-port helper is; the
/// servers fail loudly (and the harness with them) on the rare collision.
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// CPU seconds, user and kernel apart: the kernel share shows how much of a proxy's cost
/// is the socket calls every proxy must make, whatever its own code does.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub user: f64,
    pub sys: f64,
}

impl Cpu {
    /// When the figure could not be read: shows as "–" in the tables.
    pub const UNKNOWN: Cpu = Cpu {
        user: f64::NAN,
        sys: f64::NAN,
    };

    pub fn total(self) -> f64 {
        self.user + self.sys
    }

    /// What was used since `before`.
    pub fn since(self, before: Cpu) -> Cpu {
        Cpu {
            user: self.user - before.user,
            sys: self.sys - before.sys,
        }
    }
}

/// utime and stime of a whole process, in seconds. The fields are counted after the ")"
/// that ends the command name, which may itself contain spaces.
pub fn cpu_split(pid: u32) -> Option<Cpu> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state is field 3 of the full line, utime 14 and stime 15.
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some(Cpu {
        user: utime / clock_ticks(),
        sys: stime / clock_ticks(),
    })
}

/// CPU seconds used so far by this process's children that have been waited for: read
/// before and after a `redis-benchmark` run, the load generator's own cost.
pub fn children_cpu() -> Cpu {
    // SAFETY: getrusage fills a local struct.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) } != 0 {
        return Cpu::UNKNOWN;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Cpu {
        user: secs(u.ru_utime),
        sys: secs(u.ru_stime),
    }
}

/// (VmRSS, VmHWM) in bytes.
pub fn rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Sends PING until the server answers +PONG (10 s at most).
pub fn wait_ping(port: u16, name: &str) -> Result<(), String> {
    wait_pong(&format!("{name} on port {port}"), || ping(port))
}

/// The same on a unix socket.
pub fn wait_ping_unix(path: &Path, name: &str) -> Result<(), String> {
    wait_pong(&format!("{name} on {}", path.display()), || {
        let mut s = std::os::unix::net::UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        pong(&mut s)
    })
}

/// Retries `ping` every 50 ms for up to 10 s.
fn wait_pong(what: &str, ping: impl Fn() -> std::io::Result<()>) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if ping().is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{what} did not answer PING within 10 s"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ping(port: u16) -> std::io::Result<()> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(1)))?;
    pong(&mut s)
}

fn pong<S: Read + Write>(s: &mut S) -> std::io::Result<()> {
    s.write_all(PING)?;
    let mut buf = [0u8; 7];
    s.read_exact(&mut buf)?;
    if &buf == b"+PONG\r\n" {
        Ok(())
    } else {
        Err(std::io::Error::other("unexpected PING reply"))
    }
}

fn spawn(name: &'static str, port: u16, cmd: &mut Command, log: &Path) -> Result<Server, String> {
    let log_file = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .spawn()
        .map_err(|e| format!("cannot start {name}: {e}"))?;
    let mut server = Server { name, port, child };
    if let Err(e) = wait_ping(port, name) {
        let log = std::fs::read_to_string(log).unwrap_or_default();
        server.alive();
        return Err(format!("{e}\n{log}"));
    }
    Ok(server)
}

/// A private redis-server, as every test of the project starts it.
pub fn redis_server(work: &Path) -> Result<Server, String> {
    let port = free_port().map_err(|e| e.to_string())?;
    let mut cmd = Command::new("redis-server");
    cmd.args([
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
    ])
    .args(["--appendonly", "no", "--maxclients", "10000"])
    .arg("--dir")
    .arg(work);
    spawn("redis-server", port, &mut cmd, &work.join("redis.log"))
}

/// respipe in front of `upstream_port`, with `extra` flags; also on the unix socket `unix`
/// when given.
pub fn respipe(
    bin: &Path,
    upstream_port: u16,
    extra: &[String],
    work: &Path,
    tag: &str,
    unix: Option<&Path>,
) -> Result<Server, String> {
    let port = free_port().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.args(["--upstream", &format!("redis://127.0.0.1:{upstream_port}")])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .env("RUST_LOG", "warn");
    if let Some(path) = unix {
        cmd.arg("--listen").arg(format!("unix:{}", path.display()));
    }
    let server = spawn(
        "respipe",
        port,
        &mut cmd,
        &work.join(format!("respipe-{tag}.log")),
    )?;
    if let Some(path) = unix {
        wait_ping_unix(path, "respipe")?;
    }
    Ok(server)
}

/// Where nutcracker is, when it is installed.
pub fn nutcracker_path() -> Option<PathBuf> {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join("nutcracker");
        if p.exists() {
            return Some(p);
        }
    }
    None
}

/// twemproxy with one `redis: true` pool holding one server, the way it would sit beside an
/// application. `server_connections: 1` is its default: every client's requests are merged
/// onto one upstream connection, as respipe does. With `unix`, a second, identical pool
/// listens on that unix socket (twemproxy takes one listener per pool).
pub fn twemproxy(
    bin: &Path,
    upstream_port: u16,
    work: &Path,
    tag: &str,
    unix: Option<&Path>,
) -> Result<Server, String> {
    let port = free_port().map_err(|e| e.to_string())?;
    let stats = free_port().map_err(|e| e.to_string())?;
    let conf = work.join(format!("nutcracker-{tag}.yml"));
    let pool = |name: &str, listen: &str| {
        format!(
            "{name}:\n  listen: {listen}\n  hash: fnv1a_64\n  distribution: ketama\n  \
             redis: true\n  auto_eject_hosts: false\n  server_connections: 1\n  \
             servers:\n   - 127.0.0.1:{upstream_port}:1\n"
        )
    };
    let mut yml = pool("bench", &format!("127.0.0.1:{port}"));
    if let Some(path) = unix {
        yml.push_str(&pool("bench_unix", &format!("{} 0600", path.display())));
    }
    std::fs::write(&conf, yml).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(bin);
    cmd.arg("-c")
        .arg(&conf)
        .args(["-s", &stats.to_string(), "-a", "127.0.0.1", "-v", "4"])
        .arg("-o")
        .arg(work.join(format!("nutcracker-{tag}.log")));
    let server = spawn(
        "twemproxy",
        port,
        &mut cmd,
        &work.join(format!("nutcracker-{tag}.err")),
    )?;
    if let Some(path) = unix {
        wait_ping_unix(path, "twemproxy")?;
    }
    Ok(server)
}

/// Version strings for the report header.
pub fn version_of(cmd: &str, arg: &str) -> String {
    Command::new(cmd)
        .arg(arg)
        .output()
        .ok()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).to_string();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.lines().next().unwrap_or("").trim().to_string()
        })
        .unwrap_or_else(|| "not found".into())
}
