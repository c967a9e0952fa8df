//! The NMS's state in an embedded SQLite database (`state.sqlite3` in the data directory,
//! mode 0600): packages and their sequence numbers, the versions distributed, the files
//! taken in from the drop folder, campaigns (signed manifest, secret, state, the copy's
//! path), each addressee's status in each campaign, and the fleet inventory.
//!
//! The schema is created and upgraded by [`MIGRATIONS`], in order, recorded in SQLite's
//! `user_version`; a database written by a newer NMS is refused. Only I/O lives here: what
//! to do with a drop is decided by [`baton_protocol::inbox`], a campaign is taken back by
//! [`baton_protocol::endpoint::nms::NmsEndpoint::restore`].

use std::fs;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use baton_protocol::inbox::Distributed;
use baton_protocol::{CampaignId, Hash, NodeId, NodeStatus};
use rusqlite::{Connection, OptionalExtension, params};

/// The database's file name in the data directory.
pub const DB_FILE: &str = "state.sqlite3";

/// The schema, one step per `user_version`: step `i` takes version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the first schema
    "CREATE TABLE packages (
        name TEXT PRIMARY KEY,
        last_sequence INTEGER NOT NULL
    );
    CREATE TABLE versions (
        package TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        version TEXT NOT NULL,
        content BLOB NOT NULL,
        size INTEGER NOT NULL,
        campaign BLOB NOT NULL,
        rollback INTEGER NOT NULL DEFAULT 0,
        at INTEGER NOT NULL,
        PRIMARY KEY (package, sequence)
    );
    CREATE TABLE drops (
        name TEXT PRIMARY KEY,
        size INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        dev INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        content BLOB,
        outcome TEXT NOT NULL,
        at INTEGER NOT NULL
    );
    CREATE TABLE campaigns (
        id BLOB PRIMARY KEY,
        package TEXT NOT NULL,
        version TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        manifest BLOB NOT NULL,
        signature BLOB NOT NULL,
        secret BLOB NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('running', 'done', 'superseded', 'cancelled')),
        ended INTEGER NOT NULL DEFAULT 0,
        copy TEXT,
        started_at INTEGER NOT NULL,
        finished_at INTEGER
    );
    CREATE TABLE campaign_nodes (
        campaign BLOB NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
        node TEXT NOT NULL,
        status TEXT NOT NULL,
        reason TEXT,
        verified INTEGER NOT NULL DEFAULT 0,
        source TEXT,
        updated_at INTEGER NOT NULL,
        finished_at INTEGER,
        PRIMARY KEY (campaign, node)
    );
    CREATE TABLE inventory (
        node TEXT PRIMARY KEY,
        addresses TEXT NOT NULL DEFAULT '',
        first_seen INTEGER NOT NULL,
        last_seen INTEGER NOT NULL
    );
    CREATE TABLE installed (
        node TEXT NOT NULL,
        package TEXT NOT NULL,
        version TEXT NOT NULL,
        sequence INTEGER NOT NULL,
        at INTEGER NOT NULL,
        PRIMARY KEY (node, package)
    );",
    // 2: each node's tags (space-separated, from its adverts) and whether it trusts this
    // NMS (NULL: as far as known; otherwise the detail of its refusal of our offer)
    "ALTER TABLE inventory ADD COLUMN tags TEXT NOT NULL DEFAULT '';
    ALTER TABLE inventory ADD COLUMN trust TEXT;",
    // 3: the agent each node runs (from its adverts): version, build id (BLAKE3 of its
    // executable, hex), the build it ran before the last change, and when it changed
    "ALTER TABLE inventory ADD COLUMN agent_version TEXT;
    ALTER TABLE inventory ADD COLUMN agent_build TEXT;
    ALTER TABLE inventory ADD COLUMN agent_previous TEXT;
    ALTER TABLE inventory ADD COLUMN agent_since INTEGER;",
];

/// Why the database cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot open the NMS database {}: {source}", .path.display())]
    Open { path: PathBuf, source: std::io::Error },
    #[error(
        "the NMS database {} has schema version {found}, newer than the {known} this baton-nms knows: \
         run a newer baton-nms, or move the data directory aside to start afresh",
        .path.display()
    )]
    TooNew { path: PathBuf, found: i64, known: usize },
    #[error("NMS database {}: {source}", .path.display())]
    Sql { path: PathBuf, source: rusqlite::Error },
    #[error("NMS database {}: {what}", .path.display())]
    Corrupt { path: PathBuf, what: String },
}

/// One node of the inventory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InventoryNode {
    pub node: String,
    /// Where it was last seen (multiaddresses).
    pub addresses: Vec<String>,
    /// The tags of its last advert.
    pub tags: Vec<String>,
    /// `None`: it trusts this NMS as far as known; otherwise it refused our offer because
    /// it trusts another NMS, with this detail.
    pub trust: Option<String>,
    pub first_seen: u64,
    pub last_seen: u64,
    /// (package, version) installed, by package.
    pub installed: Vec<(String, String)>,
    /// The agent it advertises, if any (older agents advertise none).
    pub agent: Option<AgentSeen>,
}

/// The agent a node runs, as its adverts say.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentSeen {
    /// Its `baton-node` version.
    pub version: String,
    /// Its build id: BLAKE3 of its executable, hex.
    pub build: String,
    /// The build it advertised before this one, if it changed while this NMS watched.
    pub previous: Option<String>,
    /// Unix seconds when this build was first seen.
    pub since: u64,
}

/// A campaign's state in the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CampaignState {
    Running,
    Done,
    /// A newer version of its package was taken in while it ran.
    Superseded,
    Cancelled,
}

impl CampaignState {
    pub fn as_str(self) -> &'static str {
        match self {
            CampaignState::Running => "running",
            CampaignState::Done => "done",
            CampaignState::Superseded => "superseded",
            CampaignState::Cancelled => "cancelled",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "running" => CampaignState::Running,
            "done" => CampaignState::Done,
            "superseded" => CampaignState::Superseded,
            "cancelled" => CampaignState::Cancelled,
            _ => return None,
        })
    }
}

/// A campaign as saved.
#[derive(Debug, Clone)]
pub struct SavedCampaign {
    pub id: CampaignId,
    pub package: String,
    pub sequence: u64,
    /// The signed manifest's bytes and the signature over them.
    pub manifest: Vec<u8>,
    pub signature: Vec<u8>,
    pub secret: [u8; 32],
    pub state: CampaignState,
    /// Every addressee had reached a final state (a superseded campaign may still run).
    pub ended: bool,
    /// The NMS's copy of the package, while kept.
    pub copy: Option<PathBuf>,
    pub started_at: u64,
}

/// One addressee's saved state in a campaign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedNode {
    pub node: String,
    pub status: NodeStatus,
    pub verified: u64,
    pub source: Option<String>,
    pub updated_at: u64,
    pub finished_at: Option<u64>,
}

/// A file taken in from the drop folder, as remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropStamp {
    pub size: u64,
    pub mtime_ns: i64,
    pub dev: u64,
    pub ino: u64,
}

/// A version just signed, to record with its campaign.
#[derive(Debug, Clone)]
pub struct NewCampaign<'a> {
    pub id: CampaignId,
    pub package: &'a str,
    pub version: &'a str,
    pub sequence: u64,
    pub content: Hash,
    pub size: u64,
    pub manifest: &'a [u8],
    pub signature: &'a [u8],
    pub secret: &'a [u8; 32],
    pub copy: &'a Path,
    pub rollback: bool,
    pub at: u64,
}

/// The open database.
#[derive(Debug)]
pub struct Db {
    conn: Connection,
    path: PathBuf,
}

/// Inserts campaign `c` as running (within the caller's transaction).
fn insert_running(tx: &rusqlite::Transaction<'_>, c: &NewCampaign<'_>) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO campaigns (id, package, version, sequence, manifest, signature, secret, state, copy, started_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 'running', ?8, ?9)",
        params![
            c.id.to_vec(),
            c.package,
            c.version,
            i(c.sequence),
            c.manifest,
            c.signature,
            c.secret.to_vec(),
            c.copy.to_string_lossy(),
            i(c.at)
        ],
    )
    .map(drop)
}

fn status_text(s: &NodeStatus) -> (&'static str, Option<&str>) {
    match s {
        NodeStatus::Waiting => ("waiting", None),
        NodeStatus::Receiving => ("receiving", None),
        NodeStatus::Verifying => ("verifying", None),
        NodeStatus::Authenticated => ("authenticated", None),
        NodeStatus::Installed => ("installed", None),
        NodeStatus::Failed(r) => ("failed", Some(r.as_str())),
        NodeStatus::Unreachable(r) => ("unreachable", Some(r.as_str())),
        NodeStatus::Halted(r) => ("halted", Some(r.as_str())),
        NodeStatus::TrustsOther(r) => ("trusts-other-nms", Some(r.as_str())),
    }
}

fn status_parse(s: &str, reason: Option<String>) -> Option<NodeStatus> {
    Some(match s {
        "waiting" => NodeStatus::Waiting,
        "receiving" => NodeStatus::Receiving,
        "verifying" => NodeStatus::Verifying,
        "authenticated" => NodeStatus::Authenticated,
        "installed" => NodeStatus::Installed,
        "failed" => NodeStatus::Failed(reason.unwrap_or_default()),
        "unreachable" => NodeStatus::Unreachable(reason.unwrap_or_default()),
        "halted" => NodeStatus::Halted(reason.unwrap_or_default()),
        "trusts-other-nms" => NodeStatus::TrustsOther(reason.unwrap_or_default()),
        _ => return None,
    })
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl Db {
    /// Opens (creating it mode 0600) `data_dir/state.sqlite3` and brings its schema up to
    /// date. If the data directory holds the `sequences.json` of an older NMS, its sequence
    /// numbers are taken over once, so that they keep growing.
    pub fn open(data_dir: &Path) -> Result<Db, DbError> {
        let path = data_dir.join(DB_FILE);
        let open_err = |source| DbError::Open {
            path: path.clone(),
            source,
        };
        fs::create_dir_all(data_dir).map_err(open_err)?;
        // created here so that it is never world-readable, not even for a moment; SQLite
        // gives its -wal and -shm files the mode of the database file
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(open_err)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).map_err(open_err)?;
        let conn = Connection::open(&path).map_err(|source| DbError::Sql {
            path: path.clone(),
            source,
        })?;
        let mut db = Db { conn, path };
        db.setup()?;
        db.migrate()?;
        db.import_sequences(data_dir)?;
        Ok(db)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self, source: rusqlite::Error) -> DbError {
        DbError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    fn corrupt(&self, what: impl Into<String>) -> DbError {
        DbError::Corrupt {
            path: self.path.clone(),
            what: what.into(),
        }
    }

    fn setup(&mut self) -> Result<(), DbError> {
        self.conn
            .busy_timeout(std::time::Duration::from_secs(5))
            .map_err(|e| self.sql(e))?;
        self.conn
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;",
            )
            .map_err(|e| self.sql(e))
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<i64, DbError> {
        self.conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(|e| self.sql(e))
    }

    fn migrate(&mut self) -> Result<(), DbError> {
        let found = self.schema_version()?;
        if found < 0 || found as usize > MIGRATIONS.len() {
            return Err(DbError::TooNew {
                path: self.path.clone(),
                found,
                known: MIGRATIONS.len(),
            });
        }
        for (step, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
            let tx = self.conn.transaction().map_err(|e| DbError::Sql {
                path: self.path.clone(),
                source: e,
            })?;
            tx.execute_batch(sql)
                .and_then(|()| tx.pragma_update(None, "user_version", (step + 1) as i64))
                .and_then(|()| tx.commit())
                .map_err(|e| DbError::Sql {
                    path: self.path.clone(),
                    source: e,
                })?;
        }
        Ok(())
    }

    fn import_sequences(&mut self, data_dir: &Path) -> Result<(), DbError> {
        let file = data_dir.join("sequences.json");
        let Ok(text) = fs::read_to_string(&file) else {
            return Ok(());
        };
        let seqs: std::collections::BTreeMap<String, u64> = serde_json::from_str(&text).map_err(|e| {
            self.corrupt(format!(
                "{} cannot be taken over: {e}; fix or remove it",
                file.display()
            ))
        })?;
        for (name, seq) in seqs {
            self.conn
                .execute(
                    "INSERT INTO packages (name, last_sequence) VALUES (?1, ?2)
                     ON CONFLICT(name) DO UPDATE SET last_sequence = max(last_sequence, excluded.last_sequence)",
                    params![name, i(seq)],
                )
                .map_err(|e| self.sql(e))?;
        }
        let _ = fs::rename(&file, data_dir.join("sequences.json.imported"));
        Ok(())
    }

    /// The last sequence number `package` used (0 if none).
    pub fn last_sequence(&self, package: &str) -> Result<u64, DbError> {
        let s: Option<i64> = self
            .conn
            .query_row(
                "SELECT last_sequence FROM packages WHERE name = ?1",
                [package],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))?;
        Ok(s.map_or(0, u))
    }

    /// The versions of `package` distributed so far.
    pub fn history(&self, package: &str) -> Result<Vec<Distributed>, DbError> {
        let mut st = self
            .conn
            .prepare("SELECT version, sequence, content FROM versions WHERE package = ?1")
            .map_err(|e| self.sql(e))?;
        let rows = st
            .query_map([package], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (version, sequence, content) = row.map_err(|e| self.sql(e))?;
            let content: Hash = content
                .try_into()
                .map_err(|_| self.corrupt(format!("a content hash of {package} is not 32 bytes")))?;
            out.push(Distributed {
                version,
                sequence: u(sequence),
                content,
            });
        }
        Ok(out)
    }

    /// How the file `name` of the drop folder was last taken in, if it was.
    pub fn drop_seen(&self, name: &str) -> Result<Option<(DropStamp, String)>, DbError> {
        self.conn
            .query_row(
                "SELECT size, mtime_ns, dev, ino, outcome FROM drops WHERE name = ?1",
                [name],
                |r| {
                    Ok((
                        DropStamp {
                            size: u(r.get(0)?),
                            mtime_ns: r.get(1)?,
                            dev: u(r.get(2)?),
                            ino: u(r.get(3)?),
                        },
                        r.get::<_, String>(4)?,
                    ))
                },
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// Remembers that the file `name` as `stamp` was taken in, with what came of it.
    pub fn remember_drop(
        &self,
        name: &str,
        stamp: DropStamp,
        content: Option<&Hash>,
        outcome: &str,
        at: u64,
    ) -> Result<(), DbError> {
        self.conn
            .execute(
                "INSERT INTO drops (name, size, mtime_ns, dev, ino, content, outcome, at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(name) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
                   dev = excluded.dev, ino = excluded.ino, content = excluded.content,
                   outcome = excluded.outcome, at = excluded.at",
                params![
                    name,
                    i(stamp.size),
                    stamp.mtime_ns,
                    i(stamp.dev),
                    i(stamp.ino),
                    content.map(|c| c.to_vec()),
                    outcome,
                    i(at)
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Records a signed campaign, in one transaction: the package's new last sequence, the
    /// version, the campaign (running), and marks every other running campaign of the
    /// package superseded. Returns the ids of the campaigns it superseded.
    pub fn record_campaign(&mut self, c: &NewCampaign<'_>) -> Result<Vec<CampaignId>, DbError> {
        let path = self.path.clone();
        let sql = |source| DbError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        let superseded = {
            let mut st = tx
                .prepare("SELECT id FROM campaigns WHERE package = ?1 AND state = 'running'")
                .map_err(sql)?;
            let ids = st
                .query_map([c.package], |r| r.get::<_, Vec<u8>>(0))
                .map_err(sql)?
                .collect::<Result<Vec<_>, _>>()
                .map_err(sql)?;
            ids.into_iter()
                .filter_map(|v| CampaignId::try_from(v.as_slice()).ok())
                .collect::<Vec<_>>()
        };
        tx.execute(
            "UPDATE campaigns SET state = 'superseded' WHERE package = ?1 AND state = 'running'",
            [c.package],
        )
        .map_err(sql)?;
        tx.execute(
            "INSERT INTO packages (name, last_sequence) VALUES (?1, ?2)
             ON CONFLICT(name) DO UPDATE SET last_sequence = max(last_sequence, excluded.last_sequence)",
            params![c.package, i(c.sequence)],
        )
        .map_err(sql)?;
        tx.execute(
            "INSERT INTO versions (package, sequence, version, content, size, campaign, rollback, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                c.package,
                i(c.sequence),
                c.version,
                c.content.to_vec(),
                i(c.size),
                c.id.to_vec(),
                c.rollback,
                i(c.at)
            ],
        )
        .map_err(sql)?;
        insert_running(&tx, c).map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(superseded)
    }

    /// Records a follow-up campaign of campaign `of` (the same package version for nodes
    /// that appeared late), running, in one transaction; refused (returns false, records
    /// nothing) unless `of` is running or done and no newer version of its package was
    /// recorded: a superseded or cancelled version gets no follow-up. The package's versions and last sequence are untouched.
    pub fn record_follow_up(&mut self, of: &CampaignId, c: &NewCampaign<'_>) -> Result<bool, DbError> {
        let path = self.path.clone();
        let sql = |source| DbError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        let live: bool = tx
            .query_row(
                "SELECT count(*) FROM campaigns c WHERE id = ?1 AND state IN ('running', 'done')
                   AND NOT EXISTS (SELECT 1 FROM campaigns n
                                   WHERE n.package = c.package AND n.sequence > c.sequence)",
                [of.to_vec()],
                |r| r.get::<_, i64>(0),
            )
            .map_err(sql)?
            > 0;
        if !live {
            return Ok(false);
        }
        insert_running(&tx, c).map_err(sql)?;
        tx.commit().map_err(sql)?;
        Ok(true)
    }

    /// Every (node, package, sequence) the inventory says is installed.
    pub fn installed_sequences(&self) -> Result<Vec<(String, String, u64)>, DbError> {
        let mut st = self
            .conn
            .prepare("SELECT node, package, sequence FROM installed ORDER BY node, package")
            .map_err(|e| self.sql(e))?;
        st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, u(r.get(2)?)))
        })
        .map_err(|e| self.sql(e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| self.sql(e))
    }

    /// Every addressee reached a final state: a running campaign is done; a superseded one
    /// stays superseded, now ended.
    pub fn campaign_ended(&self, id: &CampaignId, at: u64) -> Result<(), DbError> {
        self.conn
            .execute(
                "UPDATE campaigns SET ended = 1, finished_at = ?2,
                   state = CASE state WHEN 'running' THEN 'done' ELSE state END
                 WHERE id = ?1",
                params![id.to_vec(), i(at)],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Sets a campaign's state.
    pub fn set_state(&self, id: &CampaignId, state: CampaignState) -> Result<(), DbError> {
        self.conn
            .execute(
                "UPDATE campaigns SET state = ?2 WHERE id = ?1",
                params![id.to_vec(), state.as_str()],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The operator resumed a cancelled campaign: it runs again, not ended.
    pub fn reopened(&self, id: &CampaignId) -> Result<(), DbError> {
        self.conn
            .execute(
                "UPDATE campaigns SET state = 'running', ended = 0, finished_at = NULL WHERE id = ?1",
                [id.to_vec()],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The campaign's copy was removed.
    pub fn copy_removed(&self, id: &CampaignId) -> Result<(), DbError> {
        self.conn
            .execute("UPDATE campaigns SET copy = NULL WHERE id = ?1", [id.to_vec()])
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    fn campaign_row(&self, r: &rusqlite::Row<'_>) -> rusqlite::Result<(Vec<u8>, SavedCampaign)> {
        let id: Vec<u8> = r.get(0)?;
        let secret: Vec<u8> = r.get(4)?;
        let state: String = r.get(5)?;
        Ok((
            id.clone(),
            SavedCampaign {
                id: CampaignId::try_from(id.as_slice()).unwrap_or_default(),
                package: r.get(1)?,
                sequence: u(r.get(2)?),
                manifest: r.get(3)?,
                secret: secret.as_slice().try_into().unwrap_or([0; 32]),
                state: CampaignState::parse(&state).unwrap_or(CampaignState::Cancelled),
                ended: r.get::<_, i64>(6)? != 0,
                copy: r.get::<_, Option<String>>(7)?.map(PathBuf::from),
                started_at: u(r.get(8)?),
                signature: r.get(9)?,
            },
        ))
    }

    /// Every campaign, by package and sequence.
    pub fn campaigns(&self) -> Result<Vec<SavedCampaign>, DbError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, package, sequence, manifest, secret, state, ended, copy, started_at, signature
                 FROM campaigns ORDER BY package, sequence",
            )
            .map_err(|e| self.sql(e))?;
        let rows = st
            .query_map([], |r| self.campaign_row(r))
            .map_err(|e| self.sql(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for (raw, c) in rows {
            if raw.len() != 16 {
                return Err(self.corrupt("a campaign id is not 16 bytes"));
            }
            out.push(c);
        }
        Ok(out)
    }

    /// The campaigns a restart takes back: every one not ended and not cancelled.
    pub fn unfinished(&self) -> Result<Vec<SavedCampaign>, DbError> {
        Ok(self
            .campaigns()?
            .into_iter()
            .filter(|c| !c.ended && c.state != CampaignState::Cancelled)
            .collect())
    }

    /// Saves where `node` stands in campaign `c`.
    pub fn save_node(
        &self,
        c: &CampaignId,
        node: &NodeId,
        status: &NodeStatus,
        verified: u64,
        source: Option<&NodeId>,
        at: u64,
    ) -> Result<(), DbError> {
        let (text, reason) = status_text(status);
        let finished = status.is_final().then_some(i(at));
        self.conn
            .execute(
                "INSERT INTO campaign_nodes (campaign, node, status, reason, verified, source, updated_at, finished_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(campaign, node) DO UPDATE SET status = excluded.status,
                   reason = excluded.reason, verified = max(verified, excluded.verified),
                   source = coalesce(excluded.source, source), updated_at = excluded.updated_at,
                   finished_at = coalesce(finished_at, excluded.finished_at)",
                params![
                    c.to_vec(),
                    node.to_string(),
                    text,
                    reason,
                    i(verified),
                    source.map(|s| s.to_string()),
                    i(at),
                    finished
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Every saved addressee state of campaign `c`.
    pub fn nodes_of(&self, c: &CampaignId) -> Result<Vec<SavedNode>, DbError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT node, status, reason, verified, source, updated_at, finished_at
                 FROM campaign_nodes WHERE campaign = ?1 ORDER BY node",
            )
            .map_err(|e| self.sql(e))?;
        let rows = st
            .query_map([c.to_vec()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, Option<String>>(2)?,
                    r.get::<_, i64>(3)?,
                    r.get::<_, Option<String>>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<i64>>(6)?,
                ))
            })
            .map_err(|e| self.sql(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql(e))?;
        rows.into_iter()
            .map(|(node, status, reason, verified, source, updated, finished)| {
                let status = status_parse(&status, reason)
                    .ok_or_else(|| self.corrupt(format!("node status {status:?} is unknown")))?;
                Ok(SavedNode {
                    node,
                    status,
                    verified: u(verified),
                    source,
                    updated_at: u(updated),
                    finished_at: finished.map(u),
                })
            })
            .collect()
    }

    /// `node`'s advert went away at `at`: it was seen until then.
    pub fn node_gone(&self, node: &NodeId, at: u64) -> Result<(), DbError> {
        self.conn
            .execute(
                "UPDATE inventory SET last_seen = max(last_seen, ?2) WHERE node = ?1",
                params![node.to_string(), i(at)],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// A node was seen at these addresses, advertising these tags (`None`: not known, as
    /// for a `--peer`; the tags already recorded stay).
    pub fn node_seen(
        &self,
        node: &NodeId,
        addresses: &[String],
        tags: Option<&[String]>,
        at: u64,
    ) -> Result<(), DbError> {
        self.conn
            .execute(
                "INSERT INTO inventory (node, addresses, tags, first_seen, last_seen)
                 VALUES (?1, ?2, coalesce(?3, ''), ?4, ?4)
                 ON CONFLICT(node) DO UPDATE SET addresses = excluded.addresses,
                   tags = coalesce(?3, inventory.tags), last_seen = excluded.last_seen",
                params![
                    node.to_string(),
                    addresses.join(" "),
                    tags.map(|t| t.join(" ")),
                    i(at)
                ],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// A node advertises the agent `version` with build id `build`: recorded, and when the
    /// build changed, the one before is kept as `agent_previous`.
    pub fn node_agent(&self, node: &NodeId, version: &str, build: &str, at: u64) -> Result<(), DbError> {
        self.conn
            .execute(
                "INSERT INTO inventory (node, addresses, first_seen, last_seen, agent_version, agent_build, agent_since)
                 VALUES (?1, '', ?4, ?4, ?2, ?3, ?4)
                 ON CONFLICT(node) DO UPDATE SET
                   agent_previous = CASE WHEN inventory.agent_build IS NOT NULL
                       AND inventory.agent_build != excluded.agent_build
                     THEN inventory.agent_build ELSE inventory.agent_previous END,
                   agent_since = CASE WHEN inventory.agent_build IS excluded.agent_build
                     THEN inventory.agent_since ELSE excluded.agent_since END,
                   agent_version = excluded.agent_version,
                   agent_build = excluded.agent_build",
                params![node.to_string(), version, build, i(at)],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// A node refused our offer because it trusts another NMS (`detail`: its refusal).
    pub fn node_trusts_other(&self, node: &NodeId, detail: &str, at: u64) -> Result<(), DbError> {
        self.conn
            .execute(
                "INSERT INTO inventory (node, addresses, trust, first_seen, last_seen) VALUES (?1, '', ?2, ?3, ?3)
                 ON CONFLICT(node) DO UPDATE SET trust = excluded.trust",
                params![node.to_string(), detail, i(at)],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// A node accepted one of our offers or reported to us: it trusts this NMS (as far
    /// as known). Writes nothing when no refusal is recorded.
    pub fn node_trusts_us(&self, node: &NodeId) -> Result<(), DbError> {
        self.conn
            .execute(
                "UPDATE inventory SET trust = NULL WHERE node = ?1 AND trust IS NOT NULL",
                params![node.to_string()],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// A node installed `version` (sequence `sequence`) of `package`.
    pub fn node_installed(
        &self,
        node: &NodeId,
        package: &str,
        version: &str,
        sequence: u64,
        at: u64,
    ) -> Result<(), DbError> {
        self.conn
            .execute(
                "INSERT INTO installed (node, package, version, sequence, at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT(node, package) DO UPDATE SET version = excluded.version,
                   sequence = excluded.sequence, at = excluded.at
                 WHERE excluded.sequence >= installed.sequence",
                params![node.to_string(), package, version, i(sequence), i(at)],
            )
            .map_err(|e| self.sql(e))?;
        self.conn
            .execute(
                "INSERT INTO inventory (node, addresses, first_seen, last_seen) VALUES (?1, '', ?2, ?2)
                 ON CONFLICT(node) DO UPDATE SET last_seen = max(last_seen, excluded.last_seen)",
                params![node.to_string(), i(at)],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// The inventory, ordered by node, with what each node installed.
    pub fn inventory(&self) -> Result<Vec<InventoryNode>, DbError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT node, addresses, tags, trust, first_seen, last_seen,
                   agent_version, agent_build, agent_previous, agent_since
                 FROM inventory ORDER BY node",
            )
            .map_err(|e| self.sql(e))?;
        let nodes = st
            .query_map([], |r| {
                Ok(InventoryNode {
                    node: r.get(0)?,
                    addresses: r
                        .get::<_, String>(1)?
                        .split_whitespace()
                        .map(str::to_string)
                        .collect(),
                    tags: r
                        .get::<_, String>(2)?
                        .split_whitespace()
                        .map(str::to_string)
                        .collect(),
                    trust: r.get(3)?,
                    first_seen: u(r.get(4)?),
                    last_seen: u(r.get(5)?),
                    installed: Vec::new(),
                    agent: match (r.get::<_, Option<String>>(6)?, r.get::<_, Option<String>>(7)?) {
                        (Some(version), Some(build)) => Some(AgentSeen {
                            version,
                            build,
                            previous: r.get(8)?,
                            since: u(r.get::<_, Option<i64>>(9)?.unwrap_or(0)),
                        }),
                        _ => None,
                    },
                })
            })
            .map_err(|e| self.sql(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql(e))?;
        let mut pk = self
            .conn
            .prepare("SELECT package, version FROM installed WHERE node = ?1 ORDER BY package")
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for mut n in nodes {
            n.installed = pk
                .query_map([&n.node], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
                })
                .map_err(|e| self.sql(e))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.sql(e))?;
            out.push(n);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_protocol::Keypair;

    fn node() -> NodeId {
        NodeId::of(&Keypair::generate_ed25519())
    }

    fn new_campaign<'a>(
        id: u8,
        package: &'a str,
        seq: u64,
        copy: &'a Path,
        secret: &'a [u8; 32],
    ) -> NewCampaign<'a> {
        NewCampaign {
            id: [id; 16],
            package,
            version: "1.0",
            sequence: seq,
            content: [id; 32],
            size: 10,
            manifest: b"signed manifest bytes",
            signature: b"signature",
            secret,
            copy,
            rollback: false,
            at: 100,
        }
    }

    #[test]
    fn a_new_database_is_created_0600_at_the_latest_schema() {
        let d = tempfile::tempdir().unwrap();
        let db = Db::open(&d.path().join("data")).unwrap();
        assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
        // written to, so that the WAL exists too
        db.node_seen(&node(), &["/ip4/127.0.0.1/tcp/1".into()], None, 1)
            .unwrap();
        for f in [DB_FILE.to_string(), format!("{DB_FILE}-wal")] {
            let mode = fs::metadata(d.path().join("data").join(&f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f} has mode {mode:o}");
        }
    }

    #[test]
    fn a_database_left_readable_by_others_is_made_0600_again() {
        let d = tempfile::tempdir().unwrap();
        drop(Db::open(d.path()).unwrap());
        let path = d.path().join(DB_FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        drop(Db::open(d.path()).unwrap());
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn migrations_run_from_any_older_version_and_a_newer_one_is_refused() {
        let d = tempfile::tempdir().unwrap();
        // an empty file at version 0
        {
            let db = Db::open(d.path()).unwrap();
            assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
        }
        // from a newer NMS
        {
            let c = Connection::open(d.path().join(DB_FILE)).unwrap();
            c.pragma_update(None, "user_version", (MIGRATIONS.len() + 1) as i64)
                .unwrap();
        }
        let err = Db::open(d.path()).unwrap_err().to_string();
        assert!(
            err.contains("newer than the") && err.contains("run a newer baton-nms"),
            "{err}"
        );
    }

    #[test]
    fn the_inventory_of_schema_1_is_kept_and_gains_tags_and_trust() {
        let d = tempfile::tempdir().unwrap();
        let a = node();
        {
            let c = Connection::open(d.path().join(DB_FILE)).unwrap();
            c.execute_batch(MIGRATIONS[0]).unwrap();
            c.pragma_update(None, "user_version", 1i64).unwrap();
            c.execute(
                "INSERT INTO inventory (node, addresses, first_seen, last_seen) VALUES (?1, '/ip4/198.18.0.2/tcp/1', 5, 9)",
                [a.to_string()],
            )
            .unwrap();
            c.execute(
                "INSERT INTO installed (node, package, version, sequence, at) VALUES (?1, 'frob', '1.0', 1, 9)",
                [a.to_string()],
            )
            .unwrap();
        }
        let db = Db::open(d.path()).unwrap();
        assert_eq!(db.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(
            db.inventory().unwrap(),
            vec![InventoryNode {
                node: a.to_string(),
                addresses: vec!["/ip4/198.18.0.2/tcp/1".into()],
                tags: vec![],
                trust: None,
                first_seen: 5,
                last_seen: 9,
                installed: vec![("frob".into(), "1.0".into())],
                agent: None,
            }]
        );
    }

    #[test]
    fn the_agent_build_is_recorded_with_the_one_before_it() {
        let d = tempfile::tempdir().unwrap();
        let a = node();
        let db = Db::open(d.path()).unwrap();
        db.node_seen(&a, &["/ip4/198.18.0.2/tcp/1".into()], None, 10)
            .unwrap();
        assert_eq!(db.inventory().unwrap()[0].agent, None);
        let (old, new) = ("a".repeat(64), "b".repeat(64));
        db.node_agent(&a, "0.1.0", &old, 11).unwrap();
        db.node_agent(&a, "0.1.0", &old, 12).unwrap();
        let seen = |db: &Db| db.inventory().unwrap()[0].agent.clone().unwrap();
        assert_eq!(
            seen(&db),
            AgentSeen {
                version: "0.1.0".into(),
                build: old.clone(),
                previous: None,
                since: 11
            }
        );
        db.node_agent(&a, "0.2.0", &new, 20).unwrap();
        db.node_agent(&a, "0.2.0", &new, 21).unwrap();
        assert_eq!(
            seen(&db),
            AgentSeen {
                version: "0.2.0".into(),
                build: new.clone(),
                previous: Some(old.clone()),
                since: 20
            }
        );
        // a node first heard of through its agent advert is in the inventory too
        let b = node();
        db.node_agent(&b, "0.1.0", &old, 30).unwrap();
        assert_eq!(db.inventory().unwrap().len(), 2);
    }

    #[test]
    fn tags_and_trust_are_recorded_and_trust_is_cleared() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (node(), node());
        let tags = vec!["lab".to_string(), "rack-2".to_string()];
        {
            let db = Db::open(d.path()).unwrap();
            db.node_seen(&a, &["/ip4/198.18.0.2/tcp/1".into()], Some(&tags), 10)
                .unwrap();
            // a --peer: its tags are not known, the recorded ones stay
            db.node_seen(&a, &["/ip4/198.18.0.3/tcp/1".into()], None, 11)
                .unwrap();
            db.node_trusts_other(&a, "trusts NMS 12D3Koo", 12).unwrap();
            // refused before any advert was recorded
            db.node_trusts_other(&b, "trusts NMS 12D3Kxx", 13).unwrap();
        }
        let db = Db::open(d.path()).unwrap();
        let inv = db.inventory().unwrap();
        let of = |n: &NodeId| inv.iter().find(|x| x.node == n.to_string()).unwrap().clone();
        assert_eq!(of(&a).tags, tags);
        assert_eq!(of(&a).addresses, vec!["/ip4/198.18.0.3/tcp/1".to_string()]);
        assert_eq!((of(&a).first_seen, of(&a).last_seen), (10, 11));
        assert_eq!(of(&a).trust.as_deref(), Some("trusts NMS 12D3Koo"));
        assert_eq!(of(&b).trust.as_deref(), Some("trusts NMS 12D3Kxx"));
        assert_eq!((of(&b).first_seen, of(&b).tags.len()), (13, 0));
        // a new advert changes the tags, not the trust
        db.node_seen(&a, &[], Some(&["lab".to_string()]), 14).unwrap();
        db.node_trusts_us(&a).unwrap();
        let inv = db.inventory().unwrap();
        let of = |n: &NodeId| inv.iter().find(|x| x.node == n.to_string()).unwrap().clone();
        assert_eq!(of(&a).trust, None);
        assert_eq!(of(&a).tags, vec!["lab".to_string()]);
        assert_eq!(of(&b).trust.as_deref(), Some("trusts NMS 12D3Kxx"));
        // its advert went away at 40: seen until then (an earlier time changes nothing)
        db.node_gone(&a, 40).unwrap();
        db.node_gone(&a, 30).unwrap();
        let last = |n: &NodeId| {
            let inv = db.inventory().unwrap();
            inv.iter().find(|x| x.node == n.to_string()).unwrap().last_seen
        };
        assert_eq!(last(&a), 40);
    }

    #[test]
    fn state_survives_a_reopen() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (node(), node());
        let secret = [7u8; 32];
        let copy = d.path().join("campaigns/x/frob-1.0.bin");
        {
            let mut db = Db::open(d.path()).unwrap();
            assert_eq!(db.last_sequence("frob").unwrap(), 0);
            db.record_campaign(&new_campaign(1, "frob", 1, &copy, &secret))
                .unwrap();
            db.save_node(&[1; 16], &a, &NodeStatus::Receiving, 500, Some(&b), 101)
                .unwrap();
            db.save_node(
                &[1; 16],
                &b,
                &NodeStatus::Failed("disk full".into()),
                0,
                None,
                102,
            )
            .unwrap();
            let stamp = DropStamp {
                size: 10,
                mtime_ns: 5,
                dev: 1,
                ino: 2,
            };
            db.remember_drop("frob-1.0.bin", stamp, Some(&[1; 32]), "campaign", 100)
                .unwrap();
            db.node_installed(&a, "frob", "1.0", 1, 103).unwrap();
        }
        let mut db = Db::open(d.path()).unwrap();
        assert_eq!(db.last_sequence("frob").unwrap(), 1);
        let h = db.history("frob").unwrap();
        assert_eq!((h[0].sequence, h[0].content), (1, [1; 32]));
        let un = db.unfinished().unwrap();
        assert_eq!(un.len(), 1);
        assert_eq!(un[0].manifest, b"signed manifest bytes");
        assert_eq!(un[0].secret, secret);
        assert_eq!(un[0].copy.as_deref(), Some(copy.as_path()));
        let nodes = db.nodes_of(&[1; 16]).unwrap();
        let of = |n: &NodeId| nodes.iter().find(|s| s.node == n.to_string()).unwrap().clone();
        assert_eq!((of(&a).status, of(&a).verified), (NodeStatus::Receiving, 500));
        assert_eq!(of(&a).source, Some(b.to_string()));
        assert_eq!(of(&b).status, NodeStatus::Failed("disk full".into()));
        assert_eq!(of(&b).finished_at, Some(102));
        assert_eq!(db.drop_seen("frob-1.0.bin").unwrap().unwrap().1, "campaign");
        assert_eq!(
            db.inventory().unwrap()[0].installed,
            vec![("frob".into(), "1.0".into())]
        );
        // a second version supersedes the running campaign
        let superseded = db
            .record_campaign(&new_campaign(2, "frob", 2, &copy, &secret))
            .unwrap();
        assert_eq!(superseded, vec![[1; 16]]);
        db.campaign_ended(&[1; 16], 110).unwrap();
        db.campaign_ended(&[2; 16], 111).unwrap();
        let all = db.campaigns().unwrap();
        assert_eq!(
            all.iter()
                .map(|c| (c.sequence, c.state, c.ended))
                .collect::<Vec<_>>(),
            vec![
                (1, CampaignState::Superseded, true),
                (2, CampaignState::Done, true)
            ]
        );
        assert!(db.unfinished().unwrap().is_empty());
    }

    #[test]
    fn the_sequences_of_an_older_nms_are_taken_over() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("sequences.json"), r#"{"frob": 41}"#).unwrap();
        let db = Db::open(d.path()).unwrap();
        assert_eq!(db.last_sequence("frob").unwrap(), 41);
        assert!(!d.path().join("sequences.json").exists());
        drop(db);
        assert_eq!(Db::open(d.path()).unwrap().last_sequence("frob").unwrap(), 41);
    }
}
