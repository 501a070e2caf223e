//! What one Redis command asks, for policy (`input.request`, kind `redis`)
//! and for the audit log: command, subcommand, keys, arguments, size.

use serde::Serialize;

use crate::audit::RequestSummary;

/// Arguments past this many are not shown to policy (`size` still counts
/// them all); a longer value is cut, with the cut said.
const MAX_ARGS: usize = 64;
const MAX_ARG: usize = 512;
const MAX_KEYS: usize = 256;
/// A script body is decided on in full up to this size; past it the
/// command is refused (see [`RedisRequest::too_large`]).
pub const MAX_SCRIPT: usize = 256 << 10;

const REDACTED: &str = "<redacted>";

/// `input.request` for kind `redis`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RedisRequest {
    /// Upper-cased (`GET`, `CONFIG`).
    pub command: String,
    /// Upper-cased, for commands that are families (`CONFIG SET`,
    /// `CLIENT KILL`, `MODULE LOAD`, `SCRIPT FLUSH`, `ACL SETUSER`…).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subcommand: Option<String>,
    /// The keys the command touches, by its key positions.
    pub keys: Vec<String>,
    /// Every argument after the command name (passwords redacted).
    pub args: Vec<String>,
    /// Bytes of the command as sent.
    pub size: u64,
    /// The Lua source of `EVAL` / `EVAL_RO`, and `FUNCTION LOAD`'s library.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// The function `FCALL` / `FCALL_RO` calls, or `EVALSHA`'s digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// Queued inside `MULTI`.
    pub in_transaction: bool,
    /// The database selected (`SELECT`), 0 by default.
    pub db: i64,
    /// Sent as an inline command (a plain line) rather than RESP.
    pub inline: bool,
}

/// Commands whose first argument names what they do.
const FAMILIES: &[&str] = &[
    "ACL", "CLIENT", "CLUSTER", "COMMAND", "CONFIG", "DEBUG", "FUNCTION", "LATENCY", "MEMORY",
    "MODULE", "OBJECT", "PUBSUB", "SCRIPT", "SLOWLOG", "XGROUP", "XINFO",
];

/// Where a command's keys are.
enum Keys {
    None,
    /// The first argument.
    First,
    /// The first two.
    Two,
    /// All arguments.
    All,
    /// All but the last (a timeout).
    AllButLast,
    /// Every other one, from the first (MSET).
    Pairs,
    /// A count at this argument, then that many keys.
    Counted(usize),
    /// A destination, then a count, then keys (ZUNIONSTORE).
    DestCounted,
    /// After the word STREAMS, the first half (XREAD).
    Streams,
    /// The second argument (OBJECT ENCODING key, BITOP op dest keys…).
    FromSecond,
    /// The argument after the subcommand (MEMORY USAGE key).
    Second,
}

fn keys_of(command: &str, sub: Option<&str>) -> Keys {
    match command {
        "DEL" | "UNLINK" | "EXISTS" | "TOUCH" | "MGET" | "WATCH" | "SINTER" | "SUNION"
        | "SDIFF" | "SINTERSTORE" | "SUNIONSTORE" | "SDIFFSTORE" | "PFCOUNT" | "PFMERGE" => {
            Keys::All
        }
        "BLPOP" | "BRPOP" | "BZPOPMIN" | "BZPOPMAX" => Keys::AllButLast,
        "MSET" | "MSETNX" => Keys::Pairs,
        "RENAME" | "RENAMENX" | "RPOPLPUSH" | "LMOVE" | "BLMOVE" | "BRPOPLPUSH" | "SMOVE"
        | "COPY" | "LCS" | "GEOSEARCHSTORE" | "ZRANGESTORE" => Keys::Two,
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => Keys::Counted(1),
        "ZUNION" | "ZINTER" | "ZDIFF" | "LMPOP" | "ZMPOP" | "SINTERCARD" | "ZINTERCARD" => {
            Keys::Counted(0)
        }
        "BLMPOP" | "BZMPOP" => Keys::Counted(1),
        "ZUNIONSTORE" | "ZINTERSTORE" | "ZDIFFSTORE" => Keys::DestCounted,
        "XREAD" | "XREADGROUP" => Keys::Streams,
        "BITOP" => Keys::FromSecond,
        "OBJECT" | "MEMORY" if sub.is_some_and(|s| s != "HELP" && s != "STATS") => Keys::Second,
        "XINFO" | "XGROUP" if sub.is_some_and(|s| s != "HELP") => Keys::Second,
        "KEYS" | "SCAN" | "RANDOMKEY" | "DBSIZE" | "FLUSHALL" | "FLUSHDB" | "SELECT" | "SWAPDB"
        | "PING" | "ECHO" | "AUTH" | "HELLO" | "QUIT" | "RESET" | "MULTI" | "EXEC" | "DISCARD"
        | "UNWATCH" | "INFO" | "TIME" | "LASTSAVE" | "SAVE" | "BGSAVE" | "BGREWRITEAOF"
        | "SHUTDOWN" | "MONITOR" | "SUBSCRIBE" | "UNSUBSCRIBE" | "PSUBSCRIBE" | "PUNSUBSCRIBE"
        | "SSUBSCRIBE" | "SUNSUBSCRIBE" | "PUBLISH" | "SPUBLISH" | "WAIT" | "WAITAOF"
        | "READONLY" | "READWRITE" | "REPLICAOF" | "SLAVEOF" | "FAILOVER" | "SYNC" | "PSYNC"
        | "ROLE" | "LOLWUT" => Keys::None,
        _ if FAMILIES.contains(&command) => Keys::None,
        // Nearly every other command is `CMD key …`.
        _ => Keys::First,
    }
}

fn text(b: &[u8]) -> String {
    if b.len() <= MAX_ARG {
        return String::from_utf8_lossy(b).into_owned();
    }
    let mut s = String::from_utf8_lossy(&b[..MAX_ARG]).into_owned();
    s.push_str(&format!("…(+{} bytes)", b.len() - MAX_ARG));
    s
}

fn upper(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_ascii_uppercase()
}

/// Which arguments (indices into `rest`, the arguments after the command
/// name) hold a password.
fn secret_args(command: &str, rest: &[&[u8]]) -> Vec<usize> {
    let word = |i: usize| rest.get(i).map(|a| upper(a));
    match command {
        "AUTH" => (0..rest.len()).collect(),
        "HELLO" | "MIGRATE" => {
            let mut out = Vec::new();
            for i in 0..rest.len() {
                match word(i).as_deref() {
                    // HELLO … AUTH user pass; MIGRATE … AUTH pass / AUTH2 user pass.
                    Some("AUTH") if command == "HELLO" => out.push(i + 2),
                    Some("AUTH") => out.push(i + 1),
                    Some("AUTH2") => out.push(i + 2),
                    _ => {}
                }
            }
            out
        }
        "CONFIG" if word(0).as_deref() == Some("SET") => (1..rest.len())
            .step_by(2)
            .filter(|&i| {
                matches!(
                    word(i).as_deref(),
                    Some("REQUIREPASS" | "MASTERAUTH" | "MASTERUSER")
                )
            })
            .map(|i| i + 1)
            .collect(),
        "ACL" if word(0).as_deref() == Some("SETUSER") => (2..rest.len())
            .filter(|&i| matches!(rest[i].first(), Some(b'>' | b'<' | b'#' | b'!')))
            .collect(),
        _ => Vec::new(),
    }
}

impl RedisRequest {
    /// `args`: the command name first, as the client sent it.
    pub fn new(args: &[&[u8]], size: usize, inline: bool, in_transaction: bool, db: i64) -> Self {
        let command = args.first().map(|c| upper(c)).unwrap_or_default();
        let rest = args.get(1..).unwrap_or_default();
        let subcommand = FAMILIES
            .contains(&command.as_str())
            .then(|| rest.first().map(|s| upper(s)))
            .flatten();
        let secret = secret_args(&command, rest);
        let shown = |i: usize, a: &[u8]| {
            if secret.contains(&i) {
                REDACTED.to_owned()
            } else {
                text(a)
            }
        };
        let key_at = |i: usize| rest.get(i).map(|k| text(k));
        let count_at = |i: usize| {
            rest.get(i)
                .and_then(|n| std::str::from_utf8(n).ok())
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or(0)
        };
        let keys: Vec<String> = match keys_of(&command, subcommand.as_deref()) {
            Keys::None => Vec::new(),
            Keys::First => key_at(0).into_iter().collect(),
            Keys::Second => key_at(1).into_iter().collect(),
            Keys::Two => (0..2).filter_map(key_at).collect(),
            Keys::All => (0..rest.len()).filter_map(key_at).collect(),
            Keys::AllButLast => (0..rest.len().saturating_sub(1))
                .filter_map(key_at)
                .collect(),
            Keys::Pairs => (0..rest.len()).step_by(2).filter_map(key_at).collect(),
            Keys::FromSecond => (1..rest.len()).filter_map(key_at).collect(),
            Keys::Counted(at) => (at + 1..at + 1 + count_at(at))
                .take(MAX_KEYS)
                .filter_map(key_at)
                .collect(),
            Keys::DestCounted => key_at(0)
                .into_iter()
                .chain((2..2 + count_at(1)).take(MAX_KEYS).filter_map(key_at))
                .collect(),
            Keys::Streams => {
                let at = rest
                    .iter()
                    .position(|a| a.eq_ignore_ascii_case(b"STREAMS"))
                    .map_or(rest.len(), |i| i + 1);
                let n = (rest.len() - at) / 2;
                (at..at + n).filter_map(key_at).collect()
            }
        };
        let script = match command.as_str() {
            "EVAL" | "EVAL_RO" => rest.first(),
            "FUNCTION" if subcommand.as_deref() == Some("LOAD") => rest.last(),
            _ => None,
        }
        .map(|s| String::from_utf8_lossy(&s[..s.len().min(MAX_SCRIPT)]).into_owned());
        let function = match command.as_str() {
            "EVALSHA" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => rest.first().map(|f| text(f)),
            _ => None,
        };
        Self {
            command,
            subcommand,
            keys: keys.into_iter().take(MAX_KEYS).collect(),
            args: rest
                .iter()
                .take(MAX_ARGS)
                .enumerate()
                .map(|(i, a)| shown(i, a))
                .collect(),
            size: size as u64,
            script,
            function,
            in_transaction,
            db,
            inline,
        }
    }

    /// A script too large to be shown to policy in full: refused rather
    /// than decided on a part.
    pub fn too_large(args: &[&[u8]]) -> Option<String> {
        let command = args.first().map(|c| upper(c))?;
        let body = match command.as_str() {
            "EVAL" | "EVAL_RO" => args.get(1),
            "FUNCTION" => args.last().filter(|_| args.len() > 2),
            _ => None,
        }?;
        (body.len() > MAX_SCRIPT).then(|| {
            format!(
                "{command}: a script of {} bytes is over the {MAX_SCRIPT} bytes agentguard decides on",
                body.len()
            )
        })
    }

    /// The audit line: command, subcommand and keys, never values (the
    /// first arguments of key-less admin commands, such as CONFIG SET's
    /// parameter, are shown).
    pub fn summary(&self) -> RequestSummary {
        let mut line = self.command.clone();
        let shown: Vec<&str> = if self.keys.is_empty() {
            let skip = usize::from(self.subcommand.is_some());
            if let Some(sub) = &self.subcommand {
                line.push(' ');
                line.push_str(sub);
            }
            self.args
                .iter()
                .skip(skip)
                .take(
                    if self.command == "SELECT" || self.command == "KEYS" || skip == 1 {
                        1
                    } else {
                        0
                    },
                )
                .map(String::as_str)
                .collect()
        } else {
            self.keys.iter().take(8).map(String::as_str).collect()
        };
        for s in shown {
            line.push(' ');
            line.push_str(s);
        }
        if self.keys.len() > 8 {
            line.push_str(&format!(" …(+{} keys)", self.keys.len() - 8));
        }
        RequestSummary::Redis { command: line }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(args: &[&str]) -> RedisRequest {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        RedisRequest::new(&args, 10, false, false, 0)
    }

    #[test]
    fn command_subcommand_keys() {
        let r = req(&["get", "user:1"]);
        assert_eq!((r.command.as_str(), r.subcommand.as_deref()), ("GET", None));
        assert_eq!(r.keys, ["user:1"]);
        assert_eq!(r.args, ["user:1"]);
        let r = req(&["config", "set", "dir", "/tmp"]);
        assert_eq!(r.subcommand.as_deref(), Some("SET"));
        assert!(r.keys.is_empty());
        assert_eq!(r.summary().line(), "CONFIG SET dir");
        assert_eq!(req(&["mset", "a", "1", "b", "2"]).keys, ["a", "b"]);
        assert_eq!(req(&["del", "a", "b"]).keys, ["a", "b"]);
        assert_eq!(req(&["blpop", "a", "b", "0"]).keys, ["a", "b"]);
        assert_eq!(
            req(&["zunionstore", "d", "2", "a", "b", "WEIGHTS", "1", "2"]).keys,
            ["d", "a", "b"]
        );
        assert_eq!(
            req(&["xread", "COUNT", "2", "STREAMS", "s1", "s2", "0", "0"]).keys,
            ["s1", "s2"]
        );
        assert_eq!(req(&["object", "encoding", "k"]).keys, ["k"]);
        assert!(req(&["keys", "*"]).keys.is_empty());
        assert_eq!(req(&["keys", "*"]).summary().line(), "KEYS *");
        assert_eq!(
            req(&["hgetall", "user:1"]).summary().line(),
            "HGETALL user:1"
        );
    }

    #[test]
    fn scripts_with_body_and_keys() {
        let r = req(&["EVAL", "return redis.call('GET', KEYS[1])", "1", "k", "arg"]);
        assert_eq!(r.keys, ["k"]);
        assert_eq!(
            r.script.as_deref(),
            Some("return redis.call('GET', KEYS[1])")
        );
        let r = req(&["fcall", "myfn", "2", "a", "b", "x"]);
        assert_eq!(r.keys, ["a", "b"]);
        assert_eq!(r.function.as_deref(), Some("myfn"));
        // A count past the arguments takes what is there.
        assert_eq!(req(&["EVALSHA", "abc", "9", "k"]).keys, ["k"]);
        let big = "x".repeat(MAX_SCRIPT + 1);
        assert!(RedisRequest::too_large(&[b"eval", big.as_bytes(), b"0"]).is_some());
        assert!(RedisRequest::too_large(&[b"eval", b"return 1", b"0"]).is_none());
    }

    #[test]
    fn passwords_redacted() {
        assert_eq!(req(&["AUTH", "u", "pw"]).args, [REDACTED, REDACTED]);
        assert_eq!(
            req(&["HELLO", "3", "AUTH", "default", "pw"]).args,
            ["3", "AUTH", "default", REDACTED]
        );
        assert_eq!(
            req(&["CONFIG", "SET", "requirepass", "pw", "dir", "/x"]).args,
            ["SET", "requirepass", REDACTED, "dir", "/x"]
        );
        assert_eq!(
            req(&["ACL", "SETUSER", "bob", "on", ">pw"]).args,
            ["SETUSER", "bob", "on", REDACTED]
        );
    }

    #[test]
    fn long_values_cut() {
        let long = "v".repeat(MAX_ARG + 5);
        let r = req(&["SET", "k", &long]);
        assert!(r.args[1].ends_with("…(+5 bytes)"));
    }
}
