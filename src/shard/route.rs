//! Which shard owns what a command touches.
//!
//! With N shards, a tube lives on the shard its name hashes to (a fixed
//! hash, stable across restarts, because each shard keeps its own log) and
//! a job on its tube's shard. Ids come from one counter for the whole
//! server (see [`crate::engine::IdSource`]), so an id alone does not say
//! where its job is: a command on an id the connection has not seen goes
//! to every shard, and at most one of them has the job. Every command is routed by
//! [`target`] and [`owner`]: commands on the used tube go to that tube's
//! shard, commands on an id to the id's shard, whole-server commands to all
//! shards, and connection-only commands stay on the connection's core.
//!
//! The running server has one shard, so every owner is shard 0; a
//! [`crate::shard::Shard`] among several (see [`crate::shard::spread`])
//! routes each command by these decisions.

use crate::protocol::command::Command;

/// A shard number, `0..shards`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardId(pub u32);

/// What a command needs to reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target<'a> {
    /// The connection's used tube (put, peeks, kick).
    UsedTube,
    /// A tube named in the command.
    Tube(&'a str),
    /// The shard that owns a job id.
    Job(u64),
    /// Every shard; replies are merged (stats, list-tubes).
    AllShards,
    /// The shards of the connection's watched tubes (reserve).
    WatchedTubes,
    /// Nothing but the connection's own state.
    Connection,
}

pub fn target<'a>(cmd: &Command<'a>) -> Target<'a> {
    use Command as C;
    match *cmd {
        C::Put { .. } | C::PeekReady | C::PeekDelayed | C::PeekBuried | C::Kick(_) => Target::UsedTube,
        C::Peek(id) | C::ReserveJob(id) | C::Delete(id) | C::KickJob(id) | C::Touch(id) | C::StatsJob(id) => {
            Target::Job(id)
        }
        C::Release { id, .. } | C::Bury { id, .. } => Target::Job(id),
        C::StatsTube(name) | C::Use(name) | C::Watch(name) | C::Ignore(name) => Target::Tube(name),
        C::ClearTube { name, .. } | C::ListJobs { name, .. } => Target::Tube(name),
        C::PauseTube { name: Some(name), .. } => Target::Tube(name),
        C::PauseTube { name: None, .. } => Target::Connection,
        C::Reserve | C::ReserveWithTimeout(_) => Target::WatchedTubes,
        C::Stats | C::ListTubes => Target::AllShards,
        C::ListTubeUsed | C::ListTubesWatched | C::Quit => Target::Connection,
    }
}

/// The shard that owns the tube `name` (see
/// [`crate::engine::shard_of_tube`]).
pub fn shard_of_tube(name: &str, shards: u32) -> ShardId {
    ShardId(crate::engine::shard_of_tube(name, shards))
}

/// The single shard a target resolves to, or `None` when it spans shards.
pub fn owner(target: Target<'_>, used_tube: &str, shards: u32) -> Option<ShardId> {
    if shards == 1 {
        return Some(ShardId(0));
    }
    match target {
        Target::UsedTube => Some(shard_of_tube(used_tube, shards)),
        Target::Tube(name) => Some(shard_of_tube(name, shards)),
        Target::Job(_) | Target::AllShards | Target::WatchedTubes | Target::Connection => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::command::parse;

    #[test]
    fn one_shard_owns_everything() {
        for line in ["put 0 0 1 1", "delete 5", "use foo", "stats", "reserve", "quit", "clear-tube a ready"] {
            let cmd = parse(line.as_bytes()).unwrap();
            assert_eq!(owner(target(&cmd), "default", 1), Some(ShardId(0)), "{line}");
        }
    }

    #[test]
    fn tubes_spread_over_shards_by_a_fixed_hash() {
        // Fixed values: changing the hash would strand tubes in old logs.
        assert_eq!(shard_of_tube("default", 1 << 16), ShardId(0xc5fe));
        assert_eq!(shard_of_tube("default", 4), ShardId(0xc5fe % 4));
        let spread: std::collections::HashSet<u32> = (0..64).map(|i| shard_of_tube(&format!("t{i}"), 4).0).collect();
        assert_eq!(spread.len(), 4);
        let used = "emails";
        let put = parse(b"put 0 0 1 1").unwrap();
        assert_eq!(owner(target(&put), used, 4), Some(shard_of_tube(used, 4)));
        // runnerbean's own commands go to the tube they name.
        let list = parse(b"list-jobs reports ready 0 10").unwrap();
        assert_eq!(owner(target(&list), used, 4), Some(shard_of_tube("reports", 4)));
        let clear = parse(b"clear-tube reports buried").unwrap();
        assert_eq!(owner(target(&clear), used, 4), Some(shard_of_tube("reports", 4)));
        // An id does not name its shard; neither does a whole-server command.
        assert_eq!(owner(target(&parse(b"release 6 0 0").unwrap()), used, 4), None);
        assert_eq!(owner(target(&parse(b"stats").unwrap()), used, 4), None);
    }
}
