//! Client authentication at the proxy. Clients log in to respipe (`AUTH`, `HELLO … AUTH`);
//! respipe logs in to Redis with its own credentials from `--upstream`. With no password
//! and no users configured, no login is needed, as on a default Redis.

use std::collections::HashMap;

/// `AUTH` errors, worded as Redis words them.
pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";
/// Sent to a client that must log in first.
pub const NOAUTH: &str = "NOAUTH Authentication required.";
/// `AUTH <password>` when nothing is configured.
pub const NO_PASSWORD_SET: &str = "ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?";

/// Who may use the proxy.
#[derive(Debug, Default, Clone)]
pub struct ClientAuth {
    /// user → password; `default` is the user of one-argument `AUTH`.
    users: HashMap<String, String>,
}

impl ClientAuth {
    /// True when clients must log in before running commands.
    pub fn required(&self) -> bool {
        !self.users.is_empty()
    }

    /// Sets the default user's password (`--client-password`).
    pub fn set_default_password(&mut self, password: String) {
        self.users.insert("default".into(), password);
    }

    /// Reads `user password` lines (`#` starts a comment).
    pub fn load_users(&mut self, text: &str) -> Result<(), String> {
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                [user, pass] => {
                    self.users.insert(user.to_string(), pass.to_string());
                }
                _ => return Err(format!("line {}: expected \"user password\"", n + 1)),
            }
        }
        Ok(())
    }

    /// Checks a login. `Err` carries the reply text.
    pub fn check(&self, user: Option<&[u8]>, password: &[u8]) -> Result<(), &'static str> {
        if !self.required() {
            // A default Redis: the default user has no password.
            return match user {
                None => Err(NO_PASSWORD_SET),
                Some(b"default") => Ok(()),
                Some(_) => Err(WRONGPASS),
            };
        }
        let user = std::str::from_utf8(user.unwrap_or(b"default")).map_err(|_| WRONGPASS)?;
        match self.users.get(user) {
            // Constant-time comparison is not needed for a localhost sidecar, but cheap.
            Some(p)
                if p.len() == password.len()
                    && p.bytes().zip(password).fold(0u8, |a, (x, y)| a | (x ^ y)) == 0 =>
            {
                Ok(())
            }
            _ => Err(WRONGPASS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins() {
        let open = ClientAuth::default();
        assert_eq!(open.check(None, b"x"), Err(NO_PASSWORD_SET));
        assert_eq!(open.check(Some(b"default"), b"x"), Ok(()));
        let mut a = ClientAuth::default();
        a.set_default_password("s3cret".into());
        a.load_users("# users\napp  apppw\n").unwrap();
        assert!(a.required());
        assert_eq!(a.check(None, b"s3cret"), Ok(()));
        assert_eq!(a.check(None, b"nope"), Err(WRONGPASS));
        assert_eq!(a.check(Some(b"app"), b"apppw"), Ok(()));
        assert_eq!(a.check(Some(b"ghost"), b"apppw"), Err(WRONGPASS));
        assert!(a.load_users("bad line with three\n").is_err());
    }
}
