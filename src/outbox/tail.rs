//! `walletd events tail`: the example consumer of the event stream, for downstream teams.
//!
//! It prints each event's JSON as one line on stdout. What a real consumer must do, it does:
//!
//! - **At least once, so dedupe.** The relay may publish an event twice (a crash between XADD
//!   and marking the row); every copy has the same `event_id`. Tail drops an `event_id` it has
//!   printed recently (a bounded set). A consumer that must never act twice keeps the ids it
//!   handled next to what it did with them (a unique key in its own database).
//! - **With `--group`: ack after handling.** Entries are read with XREADGROUP and acknowledged
//!   (XACK) only once printed, so a consumer that dies mid-batch gets them again. At start it
//!   first re-reads its own pending entries; then, every `claim_every`, it takes over entries
//!   another consumer of the group left pending for longer than `--claim-idle-ms` (XAUTOCLAIM).
//! - **Poison entries are acked, not retried forever.** An entry without an `event` field or
//!   whose JSON has no `event_id` is reported on stderr and acknowledged.
//! - **Bounded waits, no busy loop.** Each read blocks at most [`BLOCK`]; Redis errors are
//!   retried with capped back-off; SIGINT / SIGTERM stop it between entries.

use std::collections::{HashSet, VecDeque};
use std::io::{self, Write};
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::Value;

use crate::redis_nodes::{RedisCallError, RedisNode};

/// Longest a read waits for new entries before looping (and checking for a stop).
const BLOCK: Duration = Duration::from_secs(1);
/// Entries per read.
const READ_COUNT: usize = 100;
/// How often a group consumer looks for stale pending entries of others.
const CLAIM_EVERY: Duration = Duration::from_secs(5);
/// Back-off after a Redis error: doubles from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_LAST: Duration = Duration::from_secs(5);

/// What the command line asked for.
#[derive(Debug, Clone)]
pub struct TailOptions {
    /// Start after this stream id (`0` = the whole stream; default: only new events). With a
    /// group, where a new group starts; an existing group keeps its position.
    pub from: Option<String>,
    /// Consumer group; without one, a plain XREAD with nothing acknowledged.
    pub group: Option<String>,
    /// This consumer's name in the group (keep it stable across restarts to resume its own
    /// pending entries at once).
    pub consumer: String,
    /// Exit after printing this many events.
    pub count: Option<u64>,
    /// A pending entry idle this long belongs to a consumer presumed dead: take it over.
    pub claim_idle: Duration,
    /// How many recent `event_id`s are remembered for dedupe.
    pub dedupe_window: usize,
}

/// One stream entry: its id and its `event` field (absent if the entry was trimmed away or
/// written by something else).
#[derive(Debug, PartialEq)]
struct Entry {
    id: String,
    event: Option<String>,
}

/// What became of one entry.
#[derive(Debug, PartialEq)]
enum Handled {
    Printed,
    Duplicate,
    Poison(&'static str),
}

/// The recently printed `event_id`s, at most `capacity` of them (oldest forgotten first).
struct RecentIds {
    seen: HashSet<String>,
    order: VecDeque<String>,
    capacity: usize,
}

impl RecentIds {
    fn new(capacity: usize) -> Self {
        Self {
            seen: HashSet::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// True if `id` is new (and now remembered).
    fn insert(&mut self, id: &str) -> bool {
        if self.seen.contains(id) {
            return false;
        }
        if self.order.len() == self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        self.seen.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

/// Prints events until `count` is reached, stdout closes, or a stop signal arrives.
pub async fn run(node: &RedisNode, stream: &str, options: TailOptions) -> anyhow::Result<()> {
    let stop = async {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = terminate.recv() => {}
        }
        anyhow::Ok(())
    };
    let mut tail = Tail {
        node,
        stream,
        recent: RecentIds::new(options.dedupe_window),
        printed: 0,
        out: io::stdout(),
        options,
    };
    tokio::select! {
        result = tail.consume() => result,
        signal = stop => signal,
    }
}

struct Tail<'a> {
    node: &'a RedisNode,
    stream: &'a str,
    options: TailOptions,
    recent: RecentIds,
    printed: u64,
    out: io::Stdout,
}

/// Whether to go on after handling a batch.
enum Flow {
    Continue,
    Done,
}

impl Tail<'_> {
    async fn consume(&mut self) -> anyhow::Result<()> {
        match self.options.group.clone() {
            Some(group) => self.consume_group(&group).await,
            None => self.consume_plain().await,
        }
    }

    /// XREAD from `--from` (default: the stream's last id now, so nothing added meanwhile is
    /// missed between reads).
    async fn consume_plain(&mut self) -> anyhow::Result<()> {
        let mut last = match self.options.from.clone() {
            Some(from) => from,
            None => self.retrying(async |t| t.last_id().await).await?,
        };
        loop {
            let entries = self
                .retrying(async |t| {
                    let mut cmd = redis::cmd("XREAD");
                    cmd.arg("COUNT").arg(READ_COUNT);
                    cmd.arg("BLOCK").arg(BLOCK.as_millis() as u64);
                    cmd.arg("STREAMS").arg(t.stream).arg(&last);
                    t.read(cmd).await
                })
                .await?;
            for entry in entries {
                last.clone_from(&entry.id);
                if let Flow::Done = self.handle(&entry, None).await? {
                    return Ok(());
                }
            }
        }
    }

    /// XREADGROUP: own pending entries first, then new ones, taking over stale entries of
    /// other consumers every [`CLAIM_EVERY`].
    async fn consume_group(&mut self, group: &str) -> anyhow::Result<()> {
        self.retrying(async |t| t.create_group(group).await).await?;
        let mut pending_after = Some("0".to_owned());
        let mut next_claim = Instant::now();
        loop {
            if Instant::now() >= next_claim {
                if let Flow::Done = self.claim_stale(group).await? {
                    return Ok(());
                }
                next_claim = Instant::now() + CLAIM_EVERY;
            }
            // `0` re-reads this consumer's own unacknowledged entries (after a restart); `>`
            // reads new ones.
            let position = pending_after.clone().unwrap_or_else(|| ">".to_owned());
            let entries = self
                .retrying(async |t| {
                    let mut cmd = redis::cmd("XREADGROUP");
                    cmd.arg("GROUP").arg(group).arg(&t.options.consumer);
                    cmd.arg("COUNT").arg(READ_COUNT);
                    if position == ">" {
                        cmd.arg("BLOCK").arg(BLOCK.as_millis() as u64);
                    }
                    cmd.arg("STREAMS").arg(t.stream).arg(&position);
                    t.read(cmd).await
                })
                .await?;
            if pending_after.is_some() {
                pending_after = entries.last().map(|e| e.id.clone());
            }
            for entry in entries {
                if let Flow::Done = self.handle(&entry, Some(group)).await? {
                    return Ok(());
                }
            }
        }
    }

    /// XAUTOCLAIM every entry of the group idle longer than `claim_idle`, and handles them.
    async fn claim_stale(&mut self, group: &str) -> anyhow::Result<Flow> {
        let mut cursor = "0-0".to_owned();
        loop {
            let (next, entries) = self
                .retrying(async |t| t.autoclaim(group, &cursor).await)
                .await?;
            if !entries.is_empty() {
                tracing::info!(
                    count = entries.len(),
                    group,
                    "took over stale pending entries"
                );
            }
            for entry in entries {
                if let Flow::Done = self.handle(&entry, Some(group)).await? {
                    return Ok(Flow::Done);
                }
            }
            if next == "0-0" {
                return Ok(Flow::Continue);
            }
            cursor = next;
        }
    }

    /// Prints (unless a duplicate or poison), then acknowledges.
    async fn handle(&mut self, entry: &Entry, group: Option<&str>) -> anyhow::Result<Flow> {
        let handled = match classify(entry) {
            Ok(event_id) if !self.recent.insert(&event_id) => Handled::Duplicate,
            Ok(_) => {
                let event = entry.event.as_deref().unwrap_or_default();
                match writeln!(self.out, "{event}").and_then(|()| self.out.flush()) {
                    Ok(()) => Handled::Printed,
                    // The reader went away (`| head`): stop without acknowledging.
                    Err(error) if error.kind() == io::ErrorKind::BrokenPipe => {
                        return Ok(Flow::Done);
                    }
                    Err(error) => return Err(error).context("writing to stdout"),
                }
            }
            Err(why) => Handled::Poison(why),
        };
        match handled {
            Handled::Printed => self.printed += 1,
            Handled::Duplicate => {
                tracing::debug!(id = %entry.id, "duplicate event_id dropped")
            }
            Handled::Poison(why) => {
                tracing::warn!(id = %entry.id, why, "stream entry is not an event; skipped")
            }
        }
        if let Some(group) = group {
            self.retrying(async |t| t.ack(group, &entry.id).await)
                .await?;
        }
        let done = self.options.count.is_some_and(|n| self.printed >= n);
        Ok(if done { Flow::Done } else { Flow::Continue })
    }

    /// Runs a Redis call until it answers, backing off between failures. Only a refusal that
    /// retrying cannot fix (a wrong stream type, a bad id) is returned as an error.
    async fn retrying<T, F>(&self, call: F) -> anyhow::Result<T>
    where
        F: AsyncFn(&Self) -> Result<T, RedisCallError>,
    {
        let mut wait = RETRY_FIRST;
        loop {
            match call(self).await {
                Ok(value) => return Ok(value),
                Err(RedisCallError::Command { source, .. }) if is_permanent(&source) => {
                    return Err(source).context("Redis refused the command");
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in_ms = wait.as_millis() as u64, "Redis call failed");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(RETRY_LAST);
                }
            }
        }
    }

    async fn read(&self, cmd: redis::Cmd) -> Result<Vec<Entry>, RedisCallError> {
        let reply: Value = self
            .node
            .call_within(BLOCK + self.node.command_timeout(), async |c| {
                cmd.query_async(c).await
            })
            .await?;
        Ok(stream_entries(&reply))
    }

    /// The id of the stream's newest entry, `0-0` if it is empty or missing.
    async fn last_id(&self) -> Result<String, RedisCallError> {
        let reply: Value = self
            .node
            .call(async |c| {
                redis::cmd("XREVRANGE")
                    .arg(self.stream)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(c)
                    .await
            })
            .await?;
        Ok(entries(&reply)
            .into_iter()
            .next()
            .map_or_else(|| "0-0".to_owned(), |e| e.id))
    }

    /// Creates the group at `--from` (default `$`: new events only); an existing group keeps
    /// its position.
    async fn create_group(&self, group: &str) -> Result<(), RedisCallError> {
        let from = self.options.from.as_deref().unwrap_or("$");
        let created = self
            .node
            .call(async |c| {
                redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(self.stream)
                    .arg(group)
                    .arg(from)
                    .arg("MKSTREAM")
                    .query_async::<()>(c)
                    .await
            })
            .await;
        match created {
            Err(RedisCallError::Command { source, .. }) if source.code() == Some("BUSYGROUP") => {
                if self.options.from.is_some() {
                    tracing::info!(
                        group,
                        "group exists: it resumes where it was, --from ignored"
                    );
                }
                Ok(())
            }
            other => other,
        }
    }

    async fn autoclaim(
        &self,
        group: &str,
        cursor: &str,
    ) -> Result<(String, Vec<Entry>), RedisCallError> {
        let reply: Value = self
            .node
            .call(async |c| {
                redis::cmd("XAUTOCLAIM")
                    .arg(self.stream)
                    .arg(group)
                    .arg(&self.options.consumer)
                    .arg(self.options.claim_idle.as_millis() as u64)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(READ_COUNT)
                    .query_async(c)
                    .await
            })
            .await?;
        Ok(autoclaim_reply(&reply))
    }

    async fn ack(&self, group: &str, id: &str) -> Result<(), RedisCallError> {
        self.node
            .call(async |c| {
                redis::cmd("XACK")
                    .arg(self.stream)
                    .arg(group)
                    .arg(id)
                    .query_async::<()>(c)
                    .await
            })
            .await
    }
}

/// The entry's `event_id`, or why it is not an event.
fn classify(entry: &Entry) -> Result<String, &'static str> {
    let event = entry.event.as_deref().ok_or("no `event` field")?;
    let json: serde_json::Value = serde_json::from_str(event).map_err(|_| "not JSON")?;
    match json.get("event_id") {
        Some(serde_json::Value::String(id)) => Ok(id.clone()),
        _ => Err("no event_id"),
    }
}

/// Redis errors that retrying will not fix.
fn is_permanent(error: &redis::RedisError) -> bool {
    matches!(error.code(), Some("WRONGTYPE" | "ERR"))
}

/// XREAD / XREADGROUP reply: nil on timeout, else `[[stream, entries]]` (or a map in RESP3).
fn stream_entries(reply: &Value) -> Vec<Entry> {
    match reply {
        Value::Array(streams) => streams
            .iter()
            .filter_map(|stream| match stream {
                Value::Array(pair) if pair.len() == 2 => Some(entries(&pair[1])),
                _ => None,
            })
            .flatten()
            .collect(),
        Value::Map(streams) => streams.iter().flat_map(|(_, e)| entries(e)).collect(),
        _ => Vec::new(),
    }
}

/// XAUTOCLAIM reply: `[next_cursor, entries, deleted_ids]`.
fn autoclaim_reply(reply: &Value) -> (String, Vec<Entry>) {
    match reply {
        Value::Array(parts) if parts.len() >= 2 => {
            let next = text(&parts[0]).unwrap_or_else(|| "0-0".to_owned());
            (next, entries(&parts[1]))
        }
        _ => ("0-0".to_owned(), Vec::new()),
    }
}

/// `[[id, [field, value, …] | nil], …]`.
fn entries(value: &Value) -> Vec<Entry> {
    let Value::Array(items) = value else {
        return Vec::new();
    };
    items
        .iter()
        .filter_map(|item| match item {
            Value::Array(pair) if pair.len() == 2 => Some(Entry {
                id: text(&pair[0])?,
                event: event_field(&pair[1]),
            }),
            _ => None,
        })
        .collect()
}

fn event_field(fields: &Value) -> Option<String> {
    let Value::Array(fields) = fields else {
        return None;
    };
    fields
        .chunks_exact(2)
        .find(|pair| text(&pair[0]).as_deref() == Some("event"))
        .and_then(|pair| text(&pair[1]))
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn recent_ids_forget_the_oldest_beyond_capacity() {
        let mut recent = RecentIds::new(2);
        assert!(recent.insert("a"));
        assert!(!recent.insert("a"));
        assert!(recent.insert("b"));
        assert!(recent.insert("c"));
        assert!(recent.insert("a"), "a was forgotten when c came");
        assert!(!recent.insert("c"));
        assert_eq!(recent.order.len(), 2);
        assert_eq!(recent.seen.len(), 2);
    }

    #[test]
    fn replies_parse_and_trimmed_entries_have_no_event() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("walletd:events"),
            Value::Array(vec![
                Value::Array(vec![
                    bulk("1-0"),
                    Value::Array(vec![bulk("event"), bulk(r#"{"event_id":"e1"}"#)]),
                ]),
                Value::Array(vec![bulk("2-0"), Value::Nil]),
            ]),
        ])]);
        let parsed = stream_entries(&reply);
        assert_eq!(
            parsed,
            [
                Entry {
                    id: "1-0".into(),
                    event: Some(r#"{"event_id":"e1"}"#.into())
                },
                Entry {
                    id: "2-0".into(),
                    event: None
                },
            ]
        );
        assert_eq!(classify(&parsed[0]), Ok("e1".to_owned()));
        assert_eq!(classify(&parsed[1]), Err("no `event` field"));
        assert!(stream_entries(&Value::Nil).is_empty());

        let claimed = Value::Array(vec![
            bulk("5-0"),
            Value::Array(vec![]),
            Value::Array(vec![]),
        ]);
        assert_eq!(autoclaim_reply(&claimed), ("5-0".to_owned(), Vec::new()));
    }

    #[test]
    fn entries_without_an_event_id_are_poison() {
        for event in [
            "not json",
            r#"{"type":"wallet.debited"}"#,
            r#"{"event_id":7}"#,
        ] {
            let entry = Entry {
                id: "1-0".into(),
                event: Some(event.into()),
            };
            assert!(classify(&entry).is_err(), "{event}");
        }
    }
}
