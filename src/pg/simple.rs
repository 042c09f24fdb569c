//! A lean session for daemons that only send fixed statements as text (pgqd's ticker,
//! retry and maintenance): startup and password authentication, then the simple query
//! protocol only, on one socket, with no background task.
//!
//! Why not tokio-postgres here: its client hands every statement through a channel to a
//! connection task that frames and parses the replies, two task wake-ups and a message
//! stream per statement. For pgqd, whose whole job is one `select pgq.ticker()` per
//! database per second, callgrind put that path at about half of its instructions
//! (BENCHMARKS.md). This session writes the statement and reads the reply in the
//! caller's task, into buffers it keeps; rows are handed out as borrowed text.
//!
//! The connection settings are libpq's, resolved by [`super::conninfo`] (the same
//! `tokio_postgres::Config` every other program connects with): hosts and Unix socket
//! directories tried in order, hostaddr, port, connect_timeout, user, dbname, options,
//! application_name, target_session_attrs=read-write, passwords from the conninfo,
//! PGPASSWORD or ~/.pgpass, answered as cleartext, MD5 or SCRAM-SHA-256. Not supported,
//! each failing with a clear error: TLS (`sslmode=require`; as with tokio-postgres
//! without a TLS connector, `prefer` connects in plain text), GSSAPI/SSPI.

use std::io;
use std::net::IpAddr;
use std::path::Path;

use postgres_protocol::authentication::{md5_hash, sasl};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_postgres::config::{Host, SslMode, TargetSessionAttrs};
use tokio_postgres::Config;

use super::conninfo::{self, Env};

/// A reply bigger than this is a broken stream, not a row pgqd asked for.
const MAX_MESSAGE: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The conninfo does not parse, or what it leaves out cannot be filled in.
    #[error("{0}")]
    Config(String),
    /// No server could be reached, or the server refused the session.
    #[error("{0}")]
    Connect(String),
    /// The server answered a statement with an error; the session is still usable.
    #[error("{0}")]
    Server(String),
    /// The connection broke or the server sent something this client cannot follow:
    /// drop the session.
    #[error("{0}")]
    Broken(String),
}

impl SessionError {
    /// Whether the session is unusable after this error.
    pub fn is_fatal(&self) -> bool {
        !matches!(self, SessionError::Server(_))
    }

    fn broken(e: io::Error) -> SessionError {
        SessionError::Broken(format!("connection lost: {e}"))
    }
}

enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    async fn read_buf(&mut self, buf: &mut Vec<u8>) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read_buf(buf).await,
            Stream::Tcp(s) => s.read_buf(buf).await,
        }
    }

    async fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.write_all(buf).await,
            Stream::Tcp(s) => s.write_all(buf).await,
        }
    }

    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.try_write(buf),
            Stream::Tcp(s) => s.try_write(buf),
        }
    }
}

/// One row of a reply: its columns as text, `None` for NULL (or a column not there).
pub struct Row<'a> {
    body: &'a [u8],
}

impl<'a> Row<'a> {
    pub fn get(&self, col: usize) -> Option<&'a str> {
        let b = self.body;
        let n = u16::from_be_bytes([*b.first()?, *b.get(1)?]) as usize;
        if col >= n {
            return None;
        }
        let mut at = 2;
        for i in 0..=col {
            let len = i32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?);
            at += 4;
            if len < 0 {
                if i == col {
                    return None;
                }
                continue;
            }
            let end = at + len as usize;
            if i == col {
                return std::str::from_utf8(b.get(at..end)?).ok();
            }
            at = end;
        }
        None
    }
}

/// An open session. Dropping it says goodbye to the server (a Terminate message, if
/// the socket takes it at once) and closes the socket.
pub struct Session {
    stream: Stream,
    /// Received bytes; `rpos` is where the next message starts.
    rbuf: Vec<u8>,
    rpos: usize,
    wbuf: Vec<u8>,
    /// Where the length of the message being built goes.
    len_at: usize,
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.stream.try_write(&[b'X', 0, 0, 0, 4]);
    }
}

/// Connect with this process's environment (PGHOST, ~/.pgpass, ...).
pub async fn connect(conninfo: &str) -> Result<Session, SessionError> {
    connect_with(conninfo, &Env::process()).await
}

/// Connect with the defaults taken from `env`. A password file that had to be ignored
/// (others may read it) is part of the error when the connection fails, and logged at
/// debug level when it did not matter (as [`super::connect_with`]).
pub async fn connect_with(conninfo: &str, env: &Env) -> Result<Session, SessionError> {
    let (cfg, note) =
        conninfo::resolve_noting(conninfo, env).map_err(|e| SessionError::Config(e.detail()))?;
    match connect_config(&cfg).await {
        Ok(s) => {
            if let Some(n) = note {
                log::debug!("{n}");
            }
            Ok(s)
        }
        Err(SessionError::Connect(e)) if note.is_some() => Err(SessionError::Connect(format!(
            "{e} ({})",
            note.unwrap_or_default()
        ))),
        Err(e) => Err(e),
    }
}

/// Try each host of `cfg` in turn (libpq's order); the last failure is the error.
pub async fn connect_config(cfg: &Config) -> Result<Session, SessionError> {
    if cfg.get_ssl_mode() == SslMode::Require {
        return Err(SessionError::Config(
            "sslmode=require: this session does not speak TLS".into(),
        ));
    }
    let hosts = cfg.get_hosts();
    let addrs = cfg.get_hostaddrs();
    let ports = cfg.get_ports();
    let n = hosts.len().max(addrs.len());
    let mut last = SessionError::Connect("no host to connect to".into());
    for i in 0..n {
        let port = match ports.len() {
            0 => conninfo::DEFAULT_PORT,
            1 => ports[0],
            _ => ports.get(i).copied().unwrap_or(conninfo::DEFAULT_PORT),
        };
        let target = match (addrs.get(i), hosts.get(i)) {
            (Some(a), _) => Target::Addr(*a),
            (None, Some(Host::Tcp(h))) => Target::Name(h),
            (None, Some(Host::Unix(dir))) => Target::Socket(dir),
            (None, None) => continue,
        };
        let attempt = open(&target, port, cfg);
        let result = match cfg.get_connect_timeout() {
            Some(t) if !t.is_zero() => {
                tokio::time::timeout(*t, attempt).await.unwrap_or_else(|_| {
                    Err(SessionError::Connect(format!(
                        "{}: timeout after {}s",
                        target.describe(port),
                        t.as_secs_f64()
                    )))
                })
            }
            _ => attempt.await,
        };
        match result {
            Ok(s) => return Ok(s),
            Err(e @ SessionError::Config(_)) => return Err(e),
            Err(e) => last = e,
        }
    }
    Err(last)
}

enum Target<'a> {
    Addr(IpAddr),
    Name(&'a str),
    Socket(&'a Path),
}

impl Target<'_> {
    fn describe(&self, port: u16) -> String {
        match self {
            Target::Addr(a) => format!("{a}:{port}"),
            Target::Name(h) => format!("{h}:{port}"),
            Target::Socket(d) => format!("{}/.s.PGSQL.{port}", d.display()),
        }
    }
}

async fn open(target: &Target<'_>, port: u16, cfg: &Config) -> Result<Session, SessionError> {
    let cannot = |e: io::Error| SessionError::Connect(format!("{}: {e}", target.describe(port)));
    let stream = match target {
        Target::Addr(a) => Stream::Tcp(TcpStream::connect((*a, port)).await.map_err(cannot)?),
        Target::Name(h) => Stream::Tcp(TcpStream::connect((*h, port)).await.map_err(cannot)?),
        Target::Socket(d) => Stream::Unix(
            UnixStream::connect(d.join(format!(".s.PGSQL.{port}")))
                .await
                .map_err(cannot)?,
        ),
    };
    if let Stream::Tcp(s) = &stream {
        let _ = s.set_nodelay(true);
    }
    let mut s = Session {
        stream,
        rbuf: Vec::with_capacity(1024),
        rpos: 0,
        wbuf: Vec::with_capacity(256),
        len_at: 0,
    };
    s.startup(cfg).await.map_err(|e| match e {
        SessionError::Server(m) | SessionError::Broken(m) => SessionError::Connect(m),
        other => other,
    })?;
    if cfg.get_target_session_attrs() == TargetSessionAttrs::ReadWrite
        && s.first_value("show transaction_read_only")
            .await?
            .as_deref()
            == Some("on")
    {
        return Err(SessionError::Connect(format!(
            "{}: the server is read-only (target_session_attrs=read-write)",
            target.describe(port)
        )));
    }
    Ok(s)
}

/// The server's ErrorResponse (or NoticeResponse) as one line: its message.
fn error_text(body: &[u8]) -> String {
    let mut message = None;
    let mut fields = body;
    while let Some((&code, rest)) = fields.split_first() {
        if code == 0 {
            break;
        }
        let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
        if code == b'M' {
            message = Some(String::from_utf8_lossy(&rest[..end]).replace('\n', " "));
        }
        fields = rest.get(end + 1..).unwrap_or_default();
    }
    message.unwrap_or_else(|| "server error without a message".into())
}

impl Session {
    /// Start a frontend message of type `tag` (none: the startup packet) in the
    /// write buffer; [`Session::send`] fills in its length.
    fn begin(&mut self, tag: Option<u8>) {
        self.wbuf.clear();
        if let Some(t) = tag {
            self.wbuf.push(t);
        }
        self.len_at = self.wbuf.len();
        self.wbuf.extend_from_slice(&[0; 4]);
    }

    fn cstr(&mut self, s: &[u8]) {
        self.wbuf.extend_from_slice(s);
        self.wbuf.push(0);
    }

    async fn send(&mut self) -> Result<(), SessionError> {
        let at = self.len_at;
        let len = (self.wbuf.len() - at) as u32;
        self.wbuf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        self.stream
            .write_all(&self.wbuf)
            .await
            .map_err(SessionError::broken)
    }

    /// The next whole message: its type and where its body is in `rbuf` (valid until
    /// the next call).
    async fn message(&mut self) -> Result<(u8, std::ops::Range<usize>), SessionError> {
        loop {
            let avail = &self.rbuf[self.rpos..];
            if avail.len() >= 5 {
                let len = u32::from_be_bytes([avail[1], avail[2], avail[3], avail[4]]) as usize;
                if !(4..=MAX_MESSAGE).contains(&len) {
                    return Err(SessionError::Broken(format!(
                        "bad message length {len} from the server"
                    )));
                }
                if avail.len() > len {
                    let tag = avail[0];
                    let start = self.rpos + 5;
                    let end = self.rpos + 1 + len;
                    self.rpos = end;
                    return Ok((tag, start..end));
                }
            }
            self.fill().await?;
        }
    }

    async fn fill(&mut self) -> Result<(), SessionError> {
        if self.rpos == self.rbuf.len() {
            self.rbuf.clear();
            self.rpos = 0;
        } else if self.rpos > 0 {
            self.rbuf.drain(..self.rpos);
            self.rpos = 0;
        }
        self.rbuf.reserve(1024);
        match self.stream.read_buf(&mut self.rbuf).await {
            Ok(0) => Err(SessionError::Broken("server closed the connection".into())),
            Ok(_) => Ok(()),
            Err(e) => Err(SessionError::broken(e)),
        }
    }

    async fn startup(&mut self, cfg: &Config) -> Result<(), SessionError> {
        let user = cfg
            .get_user()
            .ok_or_else(|| SessionError::Config("no user name".into()))?;
        self.begin(None);
        self.wbuf.extend_from_slice(&196_608u32.to_be_bytes());
        let params = [
            ("user", Some(user)),
            ("database", cfg.get_dbname()),
            ("application_name", cfg.get_application_name()),
            ("options", cfg.get_options()),
            ("client_encoding", Some("UTF8")),
        ];
        for (k, v) in params {
            if let Some(v) = v {
                self.cstr(k.as_bytes());
                self.cstr(v.as_bytes());
            }
        }
        self.wbuf.push(0);
        self.send().await?;
        let password = cfg.get_password();
        let need = || {
            password.ok_or_else(|| {
                SessionError::Connect(format!(
                    "the server asked for a password for user {user:?} and none was given"
                ))
            })
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        let bad = |e: io::Error| SessionError::Connect(format!("SCRAM authentication: {e}"));
        loop {
            let (tag, body) = self.message().await?;
            let body = self.rbuf[body].to_vec();
            match tag {
                b'R' => {
                    let code = body
                        .get(..4)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                        .unwrap_or(u32::MAX);
                    let data = &body[4.min(body.len())..];
                    match code {
                        0 => {}
                        3 => {
                            let pw = need()?;
                            self.begin(Some(b'p'));
                            self.cstr(pw);
                            self.send().await?;
                        }
                        5 => {
                            let pw = need()?;
                            let salt: [u8; 4] = data.get(..4).and_then(|s| s.try_into().ok()).ok_or_else(
                                || SessionError::Broken("short MD5 salt".into()),
                            )?;
                            let hash = md5_hash(user.as_bytes(), pw, salt);
                            self.begin(Some(b'p'));
                            self.cstr(hash.as_bytes());
                            self.send().await?;
                        }
                        10 => {
                            let offered = data
                                .split(|&c| c == 0)
                                .any(|m| m == sasl::SCRAM_SHA_256.as_bytes());
                            if !offered {
                                return Err(SessionError::Connect(
                                    "the server offers no SASL mechanism this client knows (SCRAM-SHA-256 without channel binding)".into(),
                                ));
                            }
                            let s = sasl::ScramSha256::new(need()?, sasl::ChannelBinding::unsupported());
                            self.begin(Some(b'p'));
                            self.cstr(sasl::SCRAM_SHA_256.as_bytes());
                            let first = s.message();
                            self.wbuf.extend_from_slice(&(first.len() as u32).to_be_bytes());
                            self.wbuf.extend_from_slice(first);
                            self.send().await?;
                            scram = Some(s);
                        }
                        11 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                SessionError::Broken("SASL continue without a start".into())
                            })?;
                            s.update(data).map_err(bad)?;
                            let msg = s.message().to_vec();
                            self.begin(Some(b'p'));
                            self.wbuf.extend_from_slice(&msg);
                            self.send().await?;
                        }
                        12 => {
                            let s = scram.as_mut().ok_or_else(|| {
                                SessionError::Broken("SASL final without a start".into())
                            })?;
                            s.finish(data).map_err(bad)?;
                        }
                        other => {
                            return Err(SessionError::Connect(format!(
                                "authentication method {other} (GSSAPI, SSPI or Kerberos) is not supported"
                            )))
                        }
                    }
                }
                b'E' => return Err(SessionError::Connect(error_text(&body))),
                b'Z' => return Ok(()),
                // ParameterStatus, BackendKeyData, notices: nothing pgqd uses.
                _ => {}
            }
        }
    }

    /// Run `sql` (one or more statements, as text), handing each row to `row`. A
    /// server error is returned once the server is ready again, so the session stays
    /// usable after it.
    pub async fn query<F>(&mut self, sql: &str, mut row: F) -> Result<(), SessionError>
    where
        F: FnMut(Row<'_>),
    {
        self.begin(Some(b'Q'));
        self.cstr(sql.as_bytes());
        self.send().await?;
        let mut failed = None;
        loop {
            let (tag, body) = self.message().await?;
            match tag {
                b'D' => row(Row {
                    body: &self.rbuf[body],
                }),
                b'E' => failed = Some(error_text(&self.rbuf[body])),
                b'Z' => {
                    return match failed {
                        Some(e) => Err(SessionError::Server(e)),
                        None => Ok(()),
                    }
                }
                // RowDescription, CommandComplete, EmptyQuery, notices, parameter
                // changes, notifications.
                _ => {}
            }
        }
    }

    /// Run `sql`, ignoring any rows.
    pub async fn execute(&mut self, sql: &str) -> Result<(), SessionError> {
        self.query(sql, |_| {}).await
    }

    /// The first column of the first row (None: no row, or NULL).
    pub async fn first_value(&mut self, sql: &str) -> Result<Option<String>, SessionError> {
        let mut v = None;
        let mut first = true;
        self.query(sql, |r| {
            if first {
                v = r.get(0).map(str::to_string);
                first = false;
            }
        })
        .await?;
        Ok(v)
    }

    /// Every row's first `cols` columns.
    pub async fn rows(
        &mut self,
        sql: &str,
        cols: usize,
    ) -> Result<Vec<Vec<Option<String>>>, SessionError> {
        let mut out = Vec::new();
        self.query(sql, |r| {
            out.push((0..cols).map(|i| r.get(i).map(str::to_string)).collect());
        })
        .await?;
        Ok(out)
    }
}

/// `value` as an SQL string literal for the simple protocol: `'...'` with quotes
/// doubled, and the `E'...'` form when it holds a backslash (as libpq's
/// PQescapeLiteral), so it reads the same whatever standard_conforming_strings says.
pub fn literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 3);
    if value.contains('\\') {
        out.push('E');
    }
    out.push('\'');
    for c in value.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_row(cols: &[Option<&str>]) -> Vec<u8> {
        let mut b = (cols.len() as u16).to_be_bytes().to_vec();
        for c in cols {
            match c {
                Some(s) => {
                    b.extend_from_slice(&(s.len() as i32).to_be_bytes());
                    b.extend_from_slice(s.as_bytes());
                }
                None => b.extend_from_slice(&(-1i32).to_be_bytes()),
            }
        }
        b
    }

    #[test]
    fn rows_read_text_and_nulls() {
        let body = data_row(&[Some("pgq.maint"), None, Some(""), Some("x")]);
        let r = Row { body: &body };
        assert_eq!(r.get(0), Some("pgq.maint"));
        assert_eq!(r.get(1), None);
        assert_eq!(r.get(2), Some(""));
        assert_eq!(r.get(3), Some("x"));
        assert_eq!(r.get(4), None);
        let short = &body[..body.len() - 1];
        assert_eq!(
            Row { body: short }.get(3),
            None,
            "a truncated row is no value"
        );
    }

    #[test]
    fn server_errors_are_their_message() {
        let mut b = Vec::new();
        for (code, v) in [
            (b'S', "ERROR"),
            (b'C', "42883"),
            (b'M', "function x()\ndoes not exist"),
        ] {
            b.push(code);
            b.extend_from_slice(v.as_bytes());
            b.push(0);
        }
        b.push(0);
        assert_eq!(error_text(&b), "function x() does not exist");
        assert_eq!(error_text(&[0]), "server error without a message");
    }

    #[test]
    fn literals_quote_and_escape() {
        assert_eq!(literal("q"), "'q'");
        assert_eq!(literal("it's"), "'it''s'");
        assert_eq!(literal("a\\b"), "E'a\\\\b'");
    }
}
