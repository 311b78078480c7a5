//! The upstream Redis: where it is and how to log in, parsed from a `redis://` URL.

use std::fmt;

/// Where to reach Redis and with which credentials.
///
/// `Display` and `Debug` show only `host:port`: credentials never reach logs or errors.
#[derive(Clone, PartialEq, Eq)]
pub struct UpstreamAddr {
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// ACL user name; `None` for the default user.
    pub user: Option<String>,
    /// Password; `None` when Redis needs none.
    pub password: Option<String>,
    /// Database clients start in.
    pub db: u32,
    /// `rediss://`: TLS to the upstream.
    pub tls: bool,
}

/// Why an upstream URL was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AddrError {
    #[error("upstream URL must start with redis:// (got {0:?})")]
    Scheme(String),
    #[error("upstream URL has no host")]
    NoHost,
    #[error("upstream URL has an invalid port: {0:?}")]
    Port(String),
    #[error("upstream URL has an invalid database number: {0:?}")]
    Db(String),
    #[error("upstream URL has invalid percent-encoding in its credentials")]
    Encoding,
}

impl UpstreamAddr {
    /// Parses `redis://[user:pass@]host[:port][/db]`.
    pub fn parse(url: &str) -> Result<Self, AddrError> {
        let (rest, tls) = if let Some(r) = url.strip_prefix("redis://") {
            (r, false)
        } else if let Some(r) = url.strip_prefix("rediss://") {
            (r, true)
        } else {
            return Err(AddrError::Scheme(
                url.split("://").next().unwrap_or(url).to_string(),
            ));
        };
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, pass) = match u.split_once(':') {
                    Some((user, pass)) => (user, Some(pass)),
                    None => (u, None),
                };
                let user = (!user.is_empty())
                    .then(|| percent_decode(user))
                    .transpose()?;
                let pass = pass
                    .filter(|p| !p.is_empty())
                    .map(percent_decode)
                    .transpose()?;
                // `redis://secret@host` means a password, as redis-cli and redis-rs read it.
                match (user, pass) {
                    (Some(u), None) => (None, Some(u)),
                    other => other,
                }
            }
        };
        let (host, port) = split_host_port(hostport)?;
        let db = match path.trim_end_matches('/') {
            "" => 0,
            p => p.parse::<u32>().map_err(|_| AddrError::Db(p.to_string()))?,
        };
        Ok(Self {
            host,
            port,
            user,
            password,
            db,
            tls,
        })
    }

    /// `host:port` as `connect` takes it.
    pub fn socket_addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.socket_addr())
    }
}

impl fmt::Debug for UpstreamAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UpstreamAddr({}, db {})", self.socket_addr(), self.db)
    }
}

fn split_host_port(s: &str) -> Result<(String, u16), AddrError> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (h, rest) = v6.split_once(']').ok_or(AddrError::NoHost)?;
        (h, rest.strip_prefix(':'))
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err(AddrError::NoHost);
    }
    let port = match port {
        None => 6379,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| AddrError::Port(p.to_string()))?,
    };
    Ok((host.to_string(), port))
}

fn percent_decode(s: &str) -> Result<String, AddrError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3).ok_or(AddrError::Encoding)?;
            let hex = std::str::from_utf8(hex).map_err(|_| AddrError::Encoding)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| AddrError::Encoding)?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| AddrError::Encoding)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_forms() {
        let a = UpstreamAddr::parse("redis://127.0.0.1:6379").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.db, a.user, a.password),
            ("127.0.0.1", 6379, 0, None, None)
        );
        let a = UpstreamAddr::parse("redis://app:p%40ss@redis.local:7000/3").unwrap();
        assert_eq!(
            (a.user.as_deref(), a.password.as_deref(), a.port, a.db),
            (Some("app"), Some("p@ss"), 7000, 3)
        );
        let a = UpstreamAddr::parse("redis://:secret@h").unwrap();
        assert_eq!(
            (a.user, a.password.as_deref(), a.port),
            (None, Some("secret"), 6379)
        );
        let a = UpstreamAddr::parse("redis://[::1]:6380/").unwrap();
        assert_eq!(
            (a.host.as_str(), a.port, a.socket_addr()),
            ("::1", 6380, "[::1]:6380".to_string())
        );
    }

    #[test]
    fn rejects_bad_urls() {
        assert_eq!(
            UpstreamAddr::parse("http://x"),
            Err(AddrError::Scheme("http".into()))
        );
        assert!(UpstreamAddr::parse("rediss://x").unwrap().tls);
        assert_eq!(UpstreamAddr::parse("redis://:6379"), Err(AddrError::NoHost));
        assert_eq!(
            UpstreamAddr::parse("redis://h:99999"),
            Err(AddrError::Port("99999".into()))
        );
        assert_eq!(
            UpstreamAddr::parse("redis://h/x"),
            Err(AddrError::Db("x".into()))
        );
    }

    #[test]
    fn display_hides_credentials() {
        let a = UpstreamAddr::parse("redis://u:hunter2@h:1/2").unwrap();
        assert!(!format!("{a} {a:?}").contains("hunter2"));
    }
}
