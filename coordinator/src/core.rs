//! The coordinator state machine.
//!
//! [`Core`] owns every piece of coordinator state. The driver ([`crate::server`]) feeds it
//! [`Input`]s (a connection opened, a decoded message, a connection closed) and timer
//! ticks, and carries out the [`Action`]s it returns (send a message, close a connection,
//! SIGKILL a process, exit). Time is always passed in, so tests control it.
//!
//! Decisions worth knowing:
//! * A `Checkpoint` command while a generation is running does not start another one:
//!   with `wait` the requester waits for the running generation and gets its
//!   `Done`/`Error`; without `wait` it gets `Started` with the running generation's number.
//!   `kill_after` on such a request applies to the running generation.
//! * Only processes connected when a generation starts take part in it; later ones join
//!   the next generation.
//! * Generation numbers are never reused within one coordinator's life, even after a
//!   failed generation's directory was removed, so a late message about an aborted
//!   generation can never be mistaken for one about a new generation.
//! * The interval timer re-arms when a generation ends (complete or failed), so automatic
//!   checkpoints never overlap and a failing checkpoint is not retried in a tight loop.
//! * A coordinator started again adopts the computation of the first process that comes
//!   back (its hello carries the computation id) and numbers generations after what is on
//!   disk, so a restarted coordinator never reuses a generation directory.
//! * `--keep N` deletes older generations only once the new one's manifest and `latest`
//!   are durable; directories without a manifest (failed or interrupted generations) never
//!   count as kept, and those older than the new complete one are removed with them.
//! * A `RequestCheckpoint` from a process (the application API) that arrives while a
//!   generation is about to suspend that process is covered by it; otherwise it starts a
//!   generation, or one more after the running one ends.
//! * Process trees: a process that says hello while a generation waits for processes to
//!   suspend joins that generation (its parent, which waits for the child's registration
//!   inside `fork`, cannot suspend before it: so no generation misses a new process). A
//!   process that said `Leaving` is waited for until its connection closes, which is then
//!   not a failure; after `Leaving{exec}` the hello of the same real pid takes its place
//!   (also in a generation in progress and in generations started meanwhile: the exec'ing
//!   process is "awaited"). Processes reported `Excluded` (outside control) are listed
//!   in manifests while they live.

use crate::Config;
use crust_format::manifest::{self, ExcludedProcess, Manifest, ManifestProcess};
use crust_format::wire::{
    Command, FromCoord, GenerationInfo, GenerationProgress, GenerationSummary, ImageReport, Phase, ProcessInfo, Reply,
    StatusInfo, ToCoord, PROTOCOL_VERSION,
};
use std::collections::BTreeMap;
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

/// Identifies one connection (assigned by the driver, never reused).
pub type ConnId = u64;

/// What happened, as seen by the driver.
#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    Connected(ConnId),
    Message(ConnId, ToCoord),
    /// The peer went away, or sent something that is not a valid frame.
    Closed(ConnId),
}

/// What the driver must do.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Send(ConnId, FromCoord),
    /// Run an operator hook (`sh -c cmd`) with these extra environment variables; the
    /// coordinator does not wait for it.
    RunHook { cmd: String, env: Vec<(String, String)> },
    /// Close the connection (after sending whatever was queued before).
    Close(ConnId),
    /// SIGKILL a process on this host.
    Kill { real_pid: i32 },
    /// Stop the coordinator.
    Exit,
}

#[derive(Debug, Clone)]
struct Proc {
    vpid: i32,
    vppid: i32,
    real_pid: i32,
    hostname: String,
    program: String,
    args: Vec<String>,
    restored_from: Option<u64>,
    /// Said `Leaving` (the value is `exec`): its disconnect is expected.
    leaving: Option<bool>,
}

/// How long a process that exec'd may take to say hello again.
const EXEC_REHELLO: Duration = Duration::from_secs(10);

/// A process whose program exec'd: its old connection closed, the new program's hello
/// (same host and real pid) is expected.
#[derive(Debug, Clone)]
struct Awaited {
    /// Stands for the process in generations until it says hello again.
    placeholder: ConnId,
    proc: Proc,
    since: Instant,
}

/// Placeholder connection ids never collide with the driver's (which count from 0).
const PLACEHOLDER_BASE: ConnId = 1 << 62;

impl Proc {
    fn describe(&self) -> String {
        format!("vpid {} ({})", self.vpid, self.program)
    }
}

#[derive(Debug)]
enum Conn {
    /// Connected, no hello yet.
    Pending,
    Process(Proc),
    Control,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum GenPhase {
    /// `Checkpoint` sent, waiting for every `Reached(Suspended)`.
    Suspend,
    /// `Proceed(Written)` sent, waiting for every `Written`.
    Write,
    /// Forked generations: `Proceed(Captured)` sent, waiting for every `Reached(Captured)`
    /// (kernel state captured and the copy-on-write writer created, all still stopped).
    Capture,
    /// `Proceed(Resumed)` sent, waiting for every `Reached(Resumed)` (and, in a forked
    /// generation, for every `Written`: the programs run while their images are written).
    Resume,
}

impl GenPhase {
    fn waiting_for(self) -> &'static str {
        match self {
            GenPhase::Suspend => "suspend",
            GenPhase::Write => "write its image",
            GenPhase::Capture => "capture its state",
            GenPhase::Resume => "resume",
        }
    }
}

#[derive(Debug)]
struct Member {
    proc: Proc,
    /// Reached the phase the generation is waiting for.
    reached: bool,
    /// Said it is inside a critical section (`cr_disable`) and suspends when it ends.
    held: bool,
    report: Option<ImageReport>,
}

impl Member {
    /// Reached the phase `g` waits for (in a forked generation's resume phase: and its
    /// image is durable).
    fn done(&self, g: &Generation) -> bool {
        self.reached && !(g.forked && g.phase == GenPhase::Resume && self.report.is_none())
    }
}

#[derive(Debug)]
struct Generation {
    number: u64,
    comp_id: u64,
    dir: PathBuf,
    comp_dir: PathBuf,
    started: Instant,
    started_unix_ms: u64,
    /// `None` when the timeout is too large to represent (never).
    deadline: Option<Instant>,
    phase: GenPhase,
    /// Images are written by copy-on-write writers while the programs run on.
    forked: bool,
    members: BTreeMap<ConnId, Member>,
    /// Control connections waiting for the outcome.
    waiters: Vec<ConnId>,
    /// Processes whose `RequestCheckpoint` this generation answers.
    requesters: Vec<ConnId>,
    kill_after: bool,
}

/// The coordinator state machine.
#[derive(Debug)]
pub struct Core {
    cfg: Config,
    hostname: String,
    conns: BTreeMap<ConnId, Conn>,
    comp_id: Option<u64>,
    generation: Option<Generation>,
    last_complete: Option<GenerationSummary>,
    /// When the interval timer was last armed (first process joined / a generation ended).
    interval_base: Option<Instant>,
    started: Instant,
    ever_had_process: bool,
    /// Lowest generation number the next generation may use.
    min_next_generation: u64,
    /// Processes that asked for a checkpoint the running generation does not cover: the
    /// next generation starts as soon as it ends.
    pending_requesters: Vec<ConnId>,
    /// (computation, generation) the on-restart hook last ran for.
    last_restart_hook: Option<(u64, u64)>,
    /// The time of the last input or tick (for status).
    clock: Instant,
    /// Downtime of each process in the last complete generation it took part in.
    last_downtime_us: BTreeMap<ConnId, u64>,
    exiting: bool,
    out: Vec<Action>,
    /// Processes between an exec and the new program's hello.
    awaited: Vec<Awaited>,
    next_placeholder: ConnId,
    /// Processes of the computation running outside control.
    excluded: Vec<ExcludedProcess>,
}

fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

fn phase_of(p: GenPhase, reached: bool) -> &'static str {
    match (p, reached) {
        (GenPhase::Suspend, false) => "suspending",
        (GenPhase::Suspend, true) => "suspended",
        (GenPhase::Write, false) => "writing",
        (GenPhase::Write, true) => "written",
        (GenPhase::Capture, false) => "capturing",
        (GenPhase::Capture, true) => "captured",
        (GenPhase::Resume, false) => "resuming",
        (GenPhase::Resume, true) => "running",
    }
}

/// A report's image name must be a plain file name inside the generation directory.
fn valid_image_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

impl Core {
    /// A coordinator with no connections, started at `now`.
    pub fn new(cfg: Config, now: Instant) -> Self {
        Core {
            cfg,
            hostname: crate::hostname(),
            conns: BTreeMap::new(),
            comp_id: None,
            generation: None,
            last_complete: None,
            interval_base: None,
            started: now,
            ever_had_process: false,
            min_next_generation: 1,
            pending_requesters: Vec::new(),
            last_restart_hook: None,
            clock: now,
            last_downtime_us: BTreeMap::new(),
            exiting: false,
            out: Vec::new(),
            awaited: Vec::new(),
            next_placeholder: PLACEHOLDER_BASE,
            excluded: Vec::new(),
        }
    }

    /// The current computation id, if any process belongs to one.
    pub fn comp_id(&self) -> Option<u64> {
        self.comp_id
    }

    /// Number of processes: connected, or between an exec and their new hello.
    pub fn process_count(&self) -> usize {
        self.conns.values().filter(|c| matches!(c, Conn::Process(_))).count() + self.awaited.len()
    }

    /// The generation in progress, if any.
    pub fn in_progress(&self) -> Option<u64> {
        self.generation.as_ref().map(|g| g.number)
    }

    /// Process one input.
    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Action> {
        self.clock = now;
        match input {
            Input::Connected(c) => {
                self.conns.insert(c, Conn::Pending);
            }
            Input::Message(c, msg) => self.on_message(now, c, msg),
            Input::Closed(c) => self.on_closed(now, c),
        }
        self.check_idle(now);
        std::mem::take(&mut self.out)
    }

    /// Run timers that are due at `now`.
    pub fn tick(&mut self, now: Instant) -> Vec<Action> {
        self.clock = now;
        self.expire_awaited(now);
        if let Some(g) = &self.generation {
            if g.deadline.is_some_and(|d| now >= d) {
                let late: Vec<String> = g
                    .members
                    .values()
                    .filter(|m| !m.done(g))
                    .map(|m| {
                        let d = m.proc.describe();
                        if m.held {
                            format!("{d} [in a critical section: cr_disable without cr_enable]")
                        } else {
                            d
                        }
                    })
                    .collect();
                let reason = format!(
                    "timed out after {} s waiting for {} process(es) to {}: {}",
                    self.cfg.generation_timeout.as_secs(),
                    late.len(),
                    g.phase.waiting_for(),
                    late.join(", ")
                );
                self.fail_generation(now, reason);
            }
        }
        if let Some(due) = self.interval_due() {
            if now >= due {
                match self.start_generation(now) {
                    Ok(n) => info!(generation = n, "interval checkpoint started"),
                    Err(e) => {
                        warn!("interval checkpoint not started: {e}");
                        self.interval_base = Some(now);
                    }
                }
            }
        }
        self.check_idle(now);
        std::mem::take(&mut self.out)
    }

    /// When [`Core::tick`] must run next, if ever.
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut d: Option<Instant> = None;
        let mut consider = |t: Instant| d = Some(d.map_or(t, |x| x.min(t)));
        if let Some(d) = self.generation.as_ref().and_then(|g| g.deadline) {
            consider(d);
        }
        if let Some(t) = self.interval_due() {
            consider(t);
        }
        for a in &self.awaited {
            if let Some(t) = a.since.checked_add(EXEC_REHELLO) {
                consider(t);
            }
        }
        if self.cfg.exit_when_idle && !self.ever_had_process && !self.exiting {
            if let Some(t) = self.started.checked_add(self.cfg.idle_grace) {
                consider(t);
            }
        }
        d
    }

    fn interval_due(&self) -> Option<Instant> {
        if self.cfg.interval_secs == 0 || self.generation.is_some() || self.process_count() == 0 {
            return None;
        }
        // An interval too large to represent is never due.
        self.interval_base.and_then(|b| b.checked_add(Duration::from_secs(self.cfg.interval_secs)))
    }

    fn send(&mut self, c: ConnId, m: FromCoord) {
        self.out.push(Action::Send(c, m));
    }

    fn reply(&mut self, c: ConnId, r: Reply) {
        self.send(c, FromCoord::Reply(r));
    }

    fn reject(&mut self, now: Instant, c: ConnId, reason: String) {
        debug!(conn = c, "rejecting: {reason}");
        self.send(c, FromCoord::Rejected { reason });
        self.drop_conn(now, c);
    }

    /// Close a connection because of something it did.
    fn drop_conn(&mut self, now: Instant, c: ConnId) {
        self.out.push(Action::Close(c));
        // The driver reports the close back as Input::Closed; forget it now so nothing
        // else is sent to it meanwhile.
        self.forget_conn(now, c);
    }

    fn check_idle(&mut self, now: Instant) {
        if !self.cfg.exit_when_idle || self.exiting || self.generation.is_some() || self.process_count() > 0 {
            return;
        }
        if self.ever_had_process {
            info!("last process gone; exiting (--exit-when-idle)");
        } else if self.started.checked_add(self.cfg.idle_grace).is_some_and(|t| now >= t) {
            info!("no process connected within {} s; exiting (--exit-when-idle)", self.cfg.idle_grace.as_secs());
        } else {
            return;
        }
        self.exiting = true;
        self.out.push(Action::Exit);
    }

    fn on_message(&mut self, now: Instant, c: ConnId, msg: ToCoord) {
        let Some(conn) = self.conns.get(&c) else { return };
        match (conn, msg) {
            (Conn::Pending, ToCoord::HelloControl { proto, token }) => {
                if let Some(r) = self.check_hello(proto, token.as_deref()) {
                    return self.reject(now, c, r);
                }
                self.conns.insert(c, Conn::Control);
                let ckpt_dir = self.cfg.ckpt_dir.display().to_string();
                self.send(c, FromCoord::Welcome { comp_id: self.comp_id.unwrap_or(0), ckpt_dir });
            }
            (
                Conn::Pending,
                ToCoord::HelloProcess {
                    proto,
                    token,
                    comp_id,
                    vpid,
                    vppid,
                    real_pid,
                    hostname,
                    program,
                    args,
                    restored_from,
                },
            ) => {
                if let Some(r) = self.check_hello(proto, token.as_deref()) {
                    return self.reject(now, c, r);
                }
                let procs = self.process_count();
                let id = match (comp_id, self.comp_id) {
                    (Some(x), _) if procs == 0 && self.generation.is_none() => x,
                    (Some(x), Some(cur)) if x == cur => x,
                    (Some(x), cur) => {
                        return self.reject(
                            now,
                            c,
                            format!(
                                "process belongs to computation {x:016x}, but this coordinator is serving computation {} \
                                 with {procs} process(es); use a coordinator of its own (another --coord port)",
                                cur.map_or("(none)".to_string(), |c| format!("{c:016x}"))
                            ),
                        );
                    }
                    (None, Some(cur)) => cur,
                    (None, None) => crate::random_comp_id(),
                };
                let p = Proc { vpid, vppid, real_pid, hostname, program, args, restored_from, leaving: None };
                if self.conns.values().any(|o| matches!(o, Conn::Process(q) if q.vpid == p.vpid)) {
                    warn!("two processes of the computation claim vpid {}", p.vpid);
                }
                if self.comp_id != Some(id) {
                    info!("computation {id:016x}{}", if comp_id.is_some() { " (restarted)" } else { " (new)" });
                }
                info!(
                    vpid = p.vpid,
                    real_pid = p.real_pid,
                    host = %p.hostname,
                    restored_from = ?restored_from,
                    "process {} joined",
                    p.program
                );
                if self.comp_id != Some(id) {
                    // A computation that comes back (restarted, or reconnecting to a
                    // coordinator started again): its last checkpoint is on disk.
                    self.last_complete = self.latest_on_disk(id);
                }
                if let (Some(g), Some(cmd)) = (restored_from, self.cfg.on_restart.clone()) {
                    if procs == 0 || self.last_restart_hook != Some((id, g)) {
                        self.last_restart_hook = Some((id, g));
                        let env = self.hook_env("restart", id, g);
                        self.out.push(Action::RunHook { cmd, env });
                    }
                }
                self.comp_id = Some(id);
                self.ever_had_process = true;
                if procs == 0 && self.interval_base.is_none() {
                    self.interval_base = Some(now);
                }
                self.conns.insert(c, Conn::Process(p.clone()));
                let ckpt_dir = self.cfg.ckpt_dir.display().to_string();
                self.send(c, FromCoord::Welcome { comp_id: id, ckpt_dir });
                if let Some(compression) = self.cfg.compress {
                    // crcoord --compress: overrides the process's own CR_COMPRESS.
                    self.send(c, FromCoord::Settings { compression });
                }
                self.joined(c, p);
            }
            (Conn::Process(_), ToCoord::Leaving { exec }) => self.set_leaving(c, exec),
            (Conn::Process(p), ToCoord::Excluded { vpid, real_pid, program, reason }) => {
                let me = p.real_pid == real_pid;
                let hostname = p.hostname.clone();
                info!(vpid, real_pid, "process {program} runs outside control: {reason}");
                self.excluded.retain(|e| !(e.hostname == hostname && e.real_pid == real_pid));
                self.excluded.push(ExcludedProcess { vpid, real_pid, hostname, program, reason });
                if me {
                    self.set_leaving(c, false);
                }
            }
            (Conn::Process(_), ToCoord::Reached { generation, phase }) => self.on_reached(now, c, generation, phase),
            (Conn::Process(_), ToCoord::Written { generation, report }) => self.on_written(now, c, generation, report),
            (Conn::Process(_), ToCoord::Downtime { generation, downtime_us }) => {
                // Stop-the-world mode: the exact downtime, known once the process resumed.
                if let Some(r) = self
                    .generation
                    .as_mut()
                    .filter(|g| g.number == generation)
                    .and_then(|g| g.members.get_mut(&c))
                    .and_then(|m| m.report.as_mut())
                {
                    r.downtime_us = downtime_us;
                }
            }
            (Conn::Process(p), ToCoord::Failed { generation, error }) => {
                let who = p.describe();
                if self.generation.as_ref().is_some_and(|g| g.number == generation && g.members.contains_key(&c)) {
                    self.fail_generation(now, format!("process {who} failed: {error}"));
                } else {
                    debug!("ignoring Failed for generation {generation} from {who}: {error}");
                }
            }
            (Conn::Control, ToCoord::Command(cmd)) => self.on_command(now, c, cmd),
            (Conn::Process(p), ToCoord::RequestCheckpoint) => {
                let who = p.describe();
                match self.generation.as_mut() {
                    Some(g) if g.phase == GenPhase::Suspend && g.members.get(&c).is_some_and(|m| !m.reached) => {
                        debug!("checkpoint requested by {who}: covered by generation {}", g.number);
                        if !g.requesters.contains(&c) {
                            g.requesters.push(c);
                        }
                    }
                    Some(g) => {
                        debug!("checkpoint requested by {who} during generation {}: another follows it", g.number);
                        if !self.pending_requesters.contains(&c) {
                            self.pending_requesters.push(c);
                        }
                    }
                    None => match self.start_generation(now) {
                        Ok(n) => {
                            info!(generation = n, "checkpoint requested by {who} (cr_checkpoint)");
                            if let Some(g) = self.generation.as_mut() {
                                g.requesters.push(c);
                            }
                        }
                        Err(reason) => self.send(c, FromCoord::RequestFailed { generation: 0, reason }),
                    },
                }
            }
            (Conn::Process(p), ToCoord::Held { generation }) => {
                let who = p.describe();
                if let Some(m) = self
                    .generation
                    .as_mut()
                    .filter(|g| g.number == generation && g.phase == GenPhase::Suspend)
                    .and_then(|g| g.members.get_mut(&c))
                {
                    info!(generation, "{who} holds the checkpoint off (critical section)");
                    m.held = true;
                }
            }
            (_, m) => {
                debug!(conn = c, "unexpected message {m:?}; dropping the connection");
                self.drop_conn(now, c);
            }
        }
    }

    fn check_hello(&self, proto: u32, token: Option<&str>) -> Option<String> {
        if proto != PROTOCOL_VERSION {
            return Some(format!(
                "protocol version {proto} is not supported (this coordinator speaks version {PROTOCOL_VERSION})"
            ));
        }
        if let Some(want) = &self.cfg.token {
            if !token.is_some_and(|t| crate::same_secret(t, want)) {
                return Some("wrong or missing token".into());
            }
        }
        None
    }

    fn on_reached(&mut self, now: Instant, c: ConnId, generation: u64, phase: Phase) {
        let Some(g) = self.generation.as_mut().filter(|g| g.number == generation) else {
            debug!(conn = c, "ignoring Reached({phase:?}) for generation {generation} (not in progress)");
            return;
        };
        let expected = match g.phase {
            GenPhase::Suspend => Phase::Suspended,
            GenPhase::Resume => Phase::Resumed,
            GenPhase::Write => Phase::Written,
            GenPhase::Capture => Phase::Captured,
        };
        match g.members.get_mut(&c) {
            Some(m) if phase == expected && g.phase != GenPhase::Write => {
                m.reached = true;
                m.held = false;
            }
            Some(m) => {
                debug!("ignoring Reached({phase:?}) from {} in generation {generation}", m.proc.describe());
                return;
            }
            None => return,
        }
        self.advance(now);
    }

    fn on_written(&mut self, now: Instant, c: ConnId, generation: u64, report: ImageReport) {
        let Some(g) = self.generation.as_mut().filter(|g| g.number == generation) else {
            debug!(conn = c, "ignoring Written for generation {generation} (not in progress)");
            return;
        };
        let Some(m) = g.members.get_mut(&c) else { return };
        // Forked: images become durable after the programs resumed.
        let forked_write = g.forked && matches!(g.phase, GenPhase::Capture | GenPhase::Resume);
        if g.phase != GenPhase::Write && !forked_write {
            debug!("ignoring Written from {} outside the write phase", m.proc.describe());
            return;
        }
        let who = m.proc.describe();
        let problem = if !valid_image_name(&report.file) {
            Some(format!("process {who} reported an invalid image name {:?}", report.file))
        } else if m.proc.hostname == self.hostname && !g.dir.join(&report.file).is_file() {
            Some(format!("process {who} reported image {} but it is not in {}", report.file, g.dir.display()))
        } else {
            None
        };
        if let Some(reason) = problem {
            return self.fail_generation(now, reason);
        }
        debug!(generation, bytes = report.bytes, downtime_us = report.downtime_us, "{who} written");
        if !forked_write {
            m.reached = true;
        }
        m.report = Some(report);
        self.advance(now);
    }

    /// Move the generation on when every member reached the phase it waits for.
    fn advance(&mut self, now: Instant) {
        let Some(g) = self.generation.as_mut() else { return };
        if !g.members.values().all(|m| m.done(g)) {
            return;
        }
        let (next, phase) = match g.phase {
            GenPhase::Suspend if g.forked => (GenPhase::Capture, Phase::Captured),
            GenPhase::Suspend => (GenPhase::Write, Phase::Written),
            GenPhase::Capture | GenPhase::Write => (GenPhase::Resume, Phase::Resumed),
            GenPhase::Resume => return self.finish_generation(now),
        };
        g.phase = next;
        let number = g.number;
        let ids: Vec<ConnId> = g.members.keys().copied().collect();
        for m in g.members.values_mut() {
            m.reached = false;
        }
        debug!(generation = number, "all processes reached {:?}; proceeding", phase);
        for c in ids {
            self.send(c, FromCoord::Proceed { generation: number, phase });
        }
    }

    fn finish_generation(&mut self, now: Instant) {
        self.prune_excluded();
        let excluded = self.excluded.clone();
        let Some(g) = self.generation.as_ref() else { return };
        let mut processes: Vec<ManifestProcess> = g
            .members
            .values()
            .map(|m| {
                let r = m.report.clone().unwrap_or(ImageReport {
                    file: String::new(),
                    bytes: 0,
                    memory_bytes: 0,
                    downtime_us: 0,
                    write_us: 0,
                });
                let header_crc32c = if m.proc.hostname == self.hostname && valid_image_name(&r.file) {
                    manifest::image_header_crc(&g.dir.join(&r.file)).unwrap_or(0)
                } else {
                    0
                };
                ManifestProcess {
                    header_crc32c,
                    restored_from: m.proc.restored_from,
                    vpid: m.proc.vpid,
                    vppid: m.proc.vppid,
                    real_pid: m.proc.real_pid,
                    hostname: m.proc.hostname.clone(),
                    program: m.proc.program.clone(),
                    args: m.proc.args.clone(),
                    image: r.file,
                    bytes: r.bytes,
                    memory_bytes: r.memory_bytes,
                    downtime_us: r.downtime_us,
                    write_us: r.write_us,
                }
            })
            .collect();
        processes.sort_by_key(|p| p.vpid);
        let duration_ms = now.saturating_duration_since(g.started).as_millis() as u64;
        let completed_unix_ms = unix_now_ms().max(g.started_unix_ms);
        let completed_unix = completed_unix_ms / 1000;
        let bytes: u64 = processes.iter().map(|p| p.bytes).fold(0u64, u64::saturating_add);
        let max_downtime_us = processes.iter().map(|p| p.downtime_us).max().unwrap_or(0);
        let nprocs = processes.len();
        let mut hosts: Vec<String> = processes.iter().map(|p| p.hostname.clone()).collect();
        hosts.sort();
        hosts.dedup();
        // The launched program: the member whose parent is not a member (lowest vpid first).
        let vpids: Vec<i32> = processes.iter().map(|p| p.vpid).collect();
        let command = processes
            .iter()
            .find(|p| !vpids.contains(&p.vppid))
            .or(processes.first())
            .map(|p| p.args.clone())
            .unwrap_or_default();
        for p in &processes {
            info!(
                generation = g.number,
                vpid = p.vpid,
                downtime_us = p.downtime_us,
                write_us = p.write_us,
                bytes = p.bytes,
                "process {} checkpointed",
                p.program
            );
        }
        let downtimes: Vec<(ConnId, u64)> =
            g.members.iter().filter_map(|(c, m)| m.report.as_ref().map(|r| (*c, r.downtime_us))).collect();
        let m = Manifest {
            version: manifest::MANIFEST_VERSION,
            comp_id: g.comp_id,
            generation: g.number,
            started_unix: g.started_unix_ms / 1000,
            completed_unix,
            duration_ms,
            started_unix_ms: g.started_unix_ms,
            completed_unix_ms,
            bytes,
            hosts,
            command,
            processes,
            excluded,
        };
        if let Err(e) =
            manifest::write_manifest(&g.dir, &m).and_then(|()| manifest::set_latest(&g.comp_dir, g.number))
        {
            return self.fail_generation(now, format!("writing the manifest: {e}"));
        }
        let Some(g) = self.generation.take() else { return };
        self.last_downtime_us.extend(downtimes);
        let summary = GenerationSummary {
            generation: g.number,
            path: g.dir.display().to_string(),
            completed_unix,
            duration_ms,
            bytes,
            max_downtime_us,
        };
        info!(
            generation = g.number,
            processes = nprocs,
            duration_ms,
            bytes,
            max_downtime_us,
            path = %summary.path,
            "checkpoint complete"
        );
        for w in &g.waiters {
            self.reply(*w, Reply::Done(summary.clone()));
        }
        for c in g.members.keys() {
            if matches!(self.conns.get(c), Some(Conn::Process(_))) {
                self.send(*c, FromCoord::Completed { generation: g.number });
            }
        }
        self.last_complete = Some(summary);
        self.interval_base = Some(now);
        self.apply_retention(&g.comp_dir, g.number);
        if let Some(cmd) = self.cfg.on_checkpoint.clone() {
            let env = self.hook_env("checkpoint", g.comp_id, g.number);
            self.out.push(Action::RunHook { cmd, env });
        }
        if g.kill_after {
            info!("killing the computation after generation {} (--kill)", g.number);
            self.kill_all();
            self.pending_requesters.clear();
        }
        self.start_followup(now);
        self.forget_comp_if_empty();
    }

    /// Environment of an operator hook.
    fn hook_env(&self, event: &str, comp_id: u64, generation: u64) -> Vec<(String, String)> {
        vec![
            ("CR_HOOK".into(), event.into()),
            ("CR_GENERATION".into(), generation.to_string()),
            (
                "CR_GENERATION_DIR".into(),
                manifest::generation_dir(&self.cfg.ckpt_dir, comp_id, generation).display().to_string(),
            ),
            ("CR_COMP_ID".into(), format!("{comp_id:016x}")),
            ("CR_CKPT_DIR".into(), self.cfg.ckpt_dir.display().to_string()),
        ]
    }

    /// `--keep N`: called once generation `newest` is durable (manifest and `latest`).
    fn apply_retention(&mut self, comp_dir: &std::path::Path, newest: u64) {
        let Some(keep) = self.cfg.keep else { return };
        let keep = keep.max(1) as usize;
        let complete = manifest::complete_generations(comp_dir);
        let older: Vec<u64> = complete.iter().copied().filter(|&n| n < newest).collect();
        // `newest` itself is one of the kept ones.
        let excess = older.len().saturating_sub(keep - 1);
        let dead: Vec<u64> = manifest::incomplete_generations(comp_dir).into_iter().filter(|&n| n < newest).collect();
        for n in older.into_iter().take(excess).chain(dead) {
            match manifest::remove_generation(comp_dir, n) {
                Ok(()) => info!(generation = n, "removed (--keep {keep})"),
                Err(e) => warn!("cannot remove generation {n}: {e}"),
            }
        }
    }

    /// Start the generation processes asked for while another one ran.
    fn start_followup(&mut self, now: Instant) {
        if self.pending_requesters.is_empty() || self.generation.is_some() {
            return;
        }
        let requesters = std::mem::take(&mut self.pending_requesters);
        match self.start_generation(now) {
            Ok(n) => {
                info!(generation = n, "checkpoint requested during the previous one started");
                if let Some(g) = self.generation.as_mut() {
                    g.requesters = requesters;
                }
            }
            Err(reason) => {
                warn!("requested checkpoint not started: {reason}");
                for c in requesters {
                    self.send(c, FromCoord::RequestFailed { generation: 0, reason: reason.clone() });
                }
            }
        }
    }

    /// The summary of the newest complete generation of a computation on disk.
    fn latest_on_disk(&self, comp_id: u64) -> Option<GenerationSummary> {
        let comp_dir = manifest::computation_dir(&self.cfg.ckpt_dir, comp_id);
        let n = *manifest::complete_generations(&comp_dir).last()?;
        let dir = manifest::generation_dir(&self.cfg.ckpt_dir, comp_id, n);
        let m = manifest::read_manifest(&dir).ok()?;
        Some(GenerationSummary {
            generation: n,
            path: dir.display().to_string(),
            completed_unix: m.completed_unix,
            duration_ms: m.duration_ms,
            bytes: m.processes.iter().map(|p| p.bytes).fold(0u64, u64::saturating_add),
            max_downtime_us: m.processes.iter().map(|p| p.downtime_us).max().unwrap_or(0),
        })
    }

    /// Abort the generation in progress: tell the members, remove its directory, tell the waiters.
    fn fail_generation(&mut self, now: Instant, reason: String) {
        let Some(g) = self.generation.take() else { return };
        warn!("checkpoint generation {} failed: {reason}", g.number);
        for c in g.members.keys() {
            if self.conns.contains_key(c) {
                self.send(*c, FromCoord::Abort { generation: g.number, reason: reason.clone() });
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&g.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                warn!("cannot remove {}: {e}", g.dir.display());
            }
        }
        let message = format!("checkpoint generation {} failed: {reason}", g.number);
        for w in &g.waiters {
            self.reply(*w, Reply::Error { message: message.clone() });
        }
        for c in &g.requesters {
            if matches!(self.conns.get(c), Some(Conn::Process(_))) {
                self.send(*c, FromCoord::RequestFailed { generation: g.number, reason: reason.clone() });
            }
        }
        self.interval_base = Some(now);
        self.start_followup(now);
        self.forget_comp_if_empty();
    }

    fn forget_comp_if_empty(&mut self) {
        if self.process_count() == 0 && self.generation.is_none() {
            if let Some(id) = self.comp_id.take() {
                info!("computation {id:016x} has no processes left");
            }
            self.interval_base = None;
        }
    }

    /// Start a generation with every connected process. Returns its number.
    fn start_generation(&mut self, now: Instant) -> Result<u64, String> {
        if self.generation.is_some() {
            return Err("a checkpoint is already in progress".into());
        }
        let members: BTreeMap<ConnId, Member> = self
            .conns
            .iter()
            .filter_map(|(c, conn)| match conn {
                Conn::Process(p) => Some((*c, Member { proc: p.clone(), reached: false, held: false, report: None })),
                _ => None,
            })
            .collect();
        let mut members = members;
        for a in &self.awaited {
            members.insert(a.placeholder, Member { proc: a.proc.clone(), reached: false, report: None, held: false });
        }
        if members.is_empty() {
            return Err("no processes to checkpoint".into());
        }
        let comp_id = self.comp_id.ok_or("no computation")?;
        let comp_dir = manifest::computation_dir(&self.cfg.ckpt_dir, comp_id);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&comp_dir)
            .map_err(|e| format!("cannot create {}: {e}", comp_dir.display()))?;
        let mut number = manifest::next_generation(&comp_dir).max(self.min_next_generation);
        let dir = loop {
            let dir = manifest::generation_dir(&self.cfg.ckpt_dir, comp_id, number);
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    number = number.checked_add(1).ok_or("generation numbers exhausted")?
                }
                Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
            }
        };
        let Some(dir_str) = dir.to_str().map(str::to_owned) else {
            let _ = std::fs::remove_dir(&dir);
            return Err(format!("checkpoint directory {} is not valid UTF-8", dir.display()));
        };
        self.min_next_generation = number.saturating_add(1);
        let forked = self.cfg.forked;
        info!(generation = number, processes = members.len(), forked, dir = %dir_str, "checkpoint started");
        let ids: Vec<ConnId> = members.keys().copied().collect();
        self.generation = Some(Generation {
            number,
            comp_id,
            dir,
            comp_dir,
            started: now,
            started_unix_ms: unix_now_ms(),
            deadline: now.checked_add(self.cfg.generation_timeout),
            phase: GenPhase::Suspend,
            forked,
            members,
            waiters: Vec::new(),
            requesters: Vec::new(),
            kill_after: false,
        });
        for c in ids {
            if c < PLACEHOLDER_BASE {
                self.send(c, FromCoord::Checkpoint { generation: number, dir: dir_str.clone(), forked });
            }
        }
        Ok(number)
    }

    fn kill_all(&mut self) {
        let mut pids = Vec::new();
        for conn in self.conns.values() {
            if let Conn::Process(p) = conn {
                if p.hostname == self.hostname && p.real_pid > 0 {
                    pids.push(p.real_pid);
                } else {
                    warn!("cannot kill {} on host {}: not this host", p.describe(), p.hostname);
                }
            }
        }
        self.out.extend(pids.into_iter().map(|real_pid| Action::Kill { real_pid }));
    }

    fn on_command(&mut self, now: Instant, c: ConnId, cmd: Command) {
        debug!(conn = c, "command {cmd:?}");
        match cmd {
            Command::Checkpoint { wait, kill_after } => {
                let number = match &self.generation {
                    Some(g) => g.number,
                    None => match self.start_generation(now) {
                        Ok(n) => n,
                        Err(message) => return self.reply(c, Reply::Error { message }),
                    },
                };
                if let Some(g) = self.generation.as_mut() {
                    g.kill_after |= kill_after;
                    if wait {
                        if !g.waiters.contains(&c) {
                            g.waiters.push(c);
                        }
                        return;
                    }
                }
                self.reply(c, Reply::Started { generation: number });
            }
            Command::Status => {
                let info = self.status();
                self.reply(c, Reply::Status(info));
            }
            Command::Kill => {
                info!("killing every process (crctl kill)");
                self.kill_all();
                self.reply(c, Reply::Ok);
            }
            Command::Quit => {
                info!("quitting (crctl quit)");
                if self.generation.is_some() {
                    self.fail_generation(now, "the coordinator is quitting".into());
                }
                self.reply(c, Reply::Ok);
                self.exiting = true;
                self.out.push(Action::Exit);
            }
            Command::Interval { secs } => {
                info!("checkpoint interval set to {secs} s");
                self.cfg.interval_secs = secs;
                // The new interval counts from now (or from the end of the running generation).
                if self.process_count() > 0 {
                    self.interval_base = Some(now);
                }
                self.reply(c, Reply::Ok);
            }
            Command::Keep { keep } => {
                info!("keeping {} complete generation(s)", if keep == 0 { "all".to_string() } else { keep.to_string() });
                self.cfg.keep = (keep > 0).then_some(keep);
                self.reply(c, Reply::Ok);
            }
            Command::Generations => {
                let list = self.generations_on_disk();
                self.reply(c, Reply::Generations(list));
            }
        }
    }

    /// The complete generations of the current computation on disk, oldest first.
    pub fn generations_on_disk(&self) -> Vec<GenerationInfo> {
        let Some(id) = self.comp_id else { return Vec::new() };
        let comp_dir = manifest::computation_dir(&self.cfg.ckpt_dir, id);
        let latest = std::fs::read_link(comp_dir.join(manifest::LATEST_NAME))
            .ok()
            .and_then(|l| l.file_name().and_then(|n| n.to_str()).and_then(manifest::parse_generation_name));
        manifest::complete_generations(&comp_dir)
            .into_iter()
            .filter_map(|n| {
                let dir = manifest::generation_dir(&self.cfg.ckpt_dir, id, n);
                let m = manifest::read_manifest(&dir).ok()?;
                Some(GenerationInfo {
                    generation: n,
                    path: dir.display().to_string(),
                    completed_unix: m.completed_unix,
                    duration_ms: m.duration_ms,
                    bytes: m.processes.iter().map(|p| p.bytes).fold(0u64, u64::saturating_add),
                    processes: m.processes.len(),
                    latest: latest == Some(n),
                })
            })
            .collect()
    }

    /// A process said hello: it takes the place of an awaited exec'ing process, or joins
    /// a generation that is still waiting for processes to suspend.
    fn joined(&mut self, c: ConnId, p: Proc) {
        self.excluded.retain(|e| !(e.hostname == p.hostname && e.real_pid == p.real_pid));
        let placeholder = match self.awaited.iter().position(|a| a.proc.hostname == p.hostname && a.proc.real_pid == p.real_pid) {
            Some(i) => Some(self.awaited.remove(i).placeholder),
            None => None,
        };
        let Some(g) = self.generation.as_mut() else { return };
        if g.phase != GenPhase::Suspend {
            return;
        }
        if let Some(ph) = placeholder {
            if g.members.remove(&ph).is_none() {
                return;
            }
        }
        debug!(generation = g.number, vpid = p.vpid, "new process joins the generation in progress");
        g.members.insert(c, Member { proc: p, reached: false, report: None, held: false });
        let (generation, dir, forked) = (g.number, g.dir.display().to_string(), g.forked);
        self.send(c, FromCoord::Checkpoint { generation, dir, forked });
    }

    fn set_leaving(&mut self, c: ConnId, exec: bool) {
        if let Some(Conn::Process(p)) = self.conns.get_mut(&c) {
            debug!(vpid = p.vpid, exec, "process {} is leaving", p.program);
            p.leaving = Some(exec);
        }
        if let Some(m) = self.generation.as_mut().and_then(|g| g.members.get_mut(&c)) {
            m.proc.leaving = Some(exec);
        }
    }

    /// A process that said `Leaving` disconnected (outside the resume phase).
    fn left_as_announced(&mut self, now: Instant, c: ConnId, p: Proc, exec: bool) {
        let member = self.generation.as_mut().and_then(|g| g.members.remove(&c));
        if exec {
            self.await_exec(now, p, member.is_some());
        }
        self.advance(now);
    }

    /// Expect the hello of the program `p` exec'd; with `in_generation`, the generation
    /// waiting for processes to suspend waits for it too.
    fn await_exec(&mut self, now: Instant, p: Proc, in_generation: bool) {
        // The new program's hello may be read before the old connection's end.
        if self.conns.values().any(|c| matches!(c, Conn::Process(q) if q.hostname == p.hostname && q.real_pid == p.real_pid)) {
            return;
        }
        let placeholder = self.next_placeholder;
        self.next_placeholder += 1;
        let proc = Proc { leaving: None, ..p };
        if let Some(g) = self.generation.as_mut().filter(|g| in_generation && g.phase == GenPhase::Suspend) {
            g.members.insert(placeholder, Member { proc: proc.clone(), reached: false, report: None, held: false });
        }
        self.awaited.push(Awaited { placeholder, proc, since: now });
    }

    /// Give up on exec'd processes that never said hello: they run outside control.
    fn expire_awaited(&mut self, now: Instant) {
        let (late, keep): (Vec<Awaited>, Vec<Awaited>) =
            std::mem::take(&mut self.awaited).into_iter().partition(|a| a.since.checked_add(EXEC_REHELLO).is_some_and(|t| now >= t));
        self.awaited = keep;
        for a in late {
            warn!("process {} exec'd and did not register again within {} s", a.proc.describe(), EXEC_REHELLO.as_secs());
            self.excluded.push(ExcludedProcess {
                vpid: a.proc.vpid,
                real_pid: a.proc.real_pid,
                hostname: a.proc.hostname.clone(),
                program: a.proc.program.clone(),
                reason: "exec'd a program that did not register with the coordinator".into(),
            });
            if let Some(g) = self.generation.as_mut() {
                g.members.remove(&a.placeholder);
            }
            self.advance(now);
        }
    }

    /// Forget excluded processes of this host that are gone.
    fn prune_excluded(&mut self) {
        let host = self.hostname.clone();
        self.excluded.retain(|e| {
            if e.hostname != host {
                return true;
            }
            match std::fs::read_to_string(format!("/proc/{}/stat", e.real_pid)) {
                Ok(st) => st.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
                Err(_) => false,
            }
        });
    }

    /// What `crctl status` shows.
    pub fn status(&self) -> StatusInfo {
        let processes = self
            .conns
            .iter()
            .filter_map(|(c, conn)| match conn {
                Conn::Process(p) => {
                    let state = match &self.generation {
                        Some(g) => g.members.get(c).map_or("running", |m| {
                            if m.held && !m.reached {
                                "held"
                            } else if g.forked && g.phase == GenPhase::Resume && m.report.is_none() {
                                "writing"
                            } else {
                                phase_of(g.phase, m.reached)
                            }
                        }),
                        None => "running",
                    };
                    Some(ProcessInfo {
                        vpid: p.vpid,
                        vppid: p.vppid,
                        real_pid: p.real_pid,
                        hostname: p.hostname.clone(),
                        program: p.program.clone(),
                        state: state.into(),
                        restored_from: p.restored_from,
                        downtime_us: self.last_downtime_us.get(c).copied(),
                    })
                }
                _ => None,
            })
            .collect();
        StatusInfo {
            comp_id: self.comp_id,
            ckpt_dir: self.cfg.ckpt_dir.display().to_string(),
            interval_secs: self.cfg.interval_secs,
            processes,
            in_progress: self.in_progress(),
            progress: self.generation.as_ref().map(|g| GenerationProgress {
                generation: g.number,
                path: g.dir.display().to_string(),
                phase: match g.phase {
                    GenPhase::Suspend => "suspend",
                    GenPhase::Write => "write",
                    GenPhase::Capture => "capture",
                    GenPhase::Resume if g.forked => "resume and write",
                    GenPhase::Resume => "resume",
                }
                .into(),
                processes: g.members.len(),
                done: g.members.values().filter(|m| m.done(g)).count(),
                held_by: g.members.values().filter(|m| m.held && !m.reached).map(|m| m.proc.vpid).collect(),
                bytes: g.members.values().filter_map(|m| m.report.as_ref()).map(|r| r.bytes).fold(0u64, u64::saturating_add),
                elapsed_ms: self.clock.saturating_duration_since(g.started).as_millis() as u64,
            }),
            last_complete: self.last_complete.clone(),
            keep: self.cfg.keep,
            next_checkpoint_in_secs: self.interval_due().map(|d| d.saturating_duration_since(self.clock).as_secs()),
        }
    }

    fn on_closed(&mut self, now: Instant, c: ConnId) {
        self.forget_conn(now, c);
    }

    fn forget_conn(&mut self, now: Instant, c: ConnId) {
        self.last_downtime_us.remove(&c);
        let Some(conn) = self.conns.remove(&c) else { return };
        match conn {
            Conn::Pending => {}
            Conn::Control => {
                if let Some(g) = self.generation.as_mut() {
                    g.waiters.retain(|w| *w != c);
                }
            }
            Conn::Process(p) => {
                info!(vpid = p.vpid, real_pid = p.real_pid, "process {} left", p.program);
                self.pending_requesters.retain(|x| *x != c);
                let phase = self.generation.as_ref().filter(|g| g.members.contains_key(&c)).map(|g| g.phase);
                let durable = self
                    .generation
                    .as_ref()
                    .and_then(|g| g.members.get(&c))
                    .is_some_and(|m| m.report.is_some());
                if phase == Some(GenPhase::Resume) && durable {
                    // Its image is durable already: a process that exits while resuming
                    // (its program finished) does not spoil the generation.
                    if let Some(m) = self.generation.as_mut().and_then(|g| g.members.get_mut(&c)) {
                        m.reached = true;
                    }
                    if p.leaving == Some(true) {
                        self.await_exec(now, p, false);
                    }
                    self.advance(now);
                } else if phase.is_some_and(|ph| matches!(ph, GenPhase::Capture | GenPhase::Resume)) {
                    // Forked: it ended (even announced) before its image was durable; the
                    // cut includes it, so the generation cannot do without it.
                    if let Some(g) = self.generation.as_mut() {
                        g.members.remove(&c);
                    }
                    self.fail_generation(
                        now,
                        format!("process {} ended before its image was written (a forked writer's report is missing)", p.describe()),
                    );
                } else if let Some(exec) = p.leaving {
                    self.left_as_announced(now, c, p, exec);
                } else if let Some(phase) = phase {
                    if let Some(g) = self.generation.as_mut() {
                        g.members.remove(&c);
                    }
                    self.fail_generation(
                        now,
                        format!(
                            "process {} disconnected while the coordinator waited for it to {}",
                            p.describe(),
                            phase.waiting_for()
                        ),
                    );
                }
                self.forget_comp_if_empty();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crust_format::wire::PROTOCOL_VERSION as V;

    struct Fixture {
        core: Core,
        dir: PathBuf,
        now: Instant,
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn fixture(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("crust-core-test-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let now = Instant::now();
        let mut cfg = Config::new(dir.clone());
        // The phase tests below drive stop-the-world generations; forked ones have their own.
        cfg.forked = false;
        Fixture { core: Core::new(cfg, now), dir, now }
    }

    /// A forked generation: capture barrier while everyone is stopped, then resume, and
    /// completion only once every process resumed *and* reported its durable image.
    #[test]
    fn forked_generation_resumes_before_images_are_durable() {
        let mut f = fixture("forked");
        f.core.cfg.forked = true;
        f.connect(1, hello(Some(0x42), 101));
        f.connect(2, hello(None, 102));
        f.control(9);
        let a = f.cmd(9, Command::Checkpoint { wait: true, kill_after: false });
        let dir = match sends_to(&a, 1).as_slice() {
            [FromCoord::Checkpoint { generation: 1, dir, forked: true }] => PathBuf::from(dir),
            other => panic!("{other:?}"),
        };
        f.msg(1, ToCoord::Reached { generation: 1, phase: Phase::Suspended });
        let a = f.msg(2, ToCoord::Reached { generation: 1, phase: Phase::Suspended });
        assert_eq!(sends_to(&a, 1), vec![FromCoord::Proceed { generation: 1, phase: Phase::Captured }]);
        assert!(f.msg(1, ToCoord::Reached { generation: 1, phase: Phase::Captured }).is_empty());
        assert_eq!(f.core.status().processes[0].state, "captured");
        let a = f.msg(2, ToCoord::Reached { generation: 1, phase: Phase::Captured });
        assert_eq!(sends_to(&a, 2), vec![FromCoord::Proceed { generation: 1, phase: Phase::Resumed }]);
        // Both run again; process 1's image is durable first.
        std::fs::write(dir.join(manifest::image_file_name(101)), b"img").unwrap();
        assert!(f.msg(1, ToCoord::Reached { generation: 1, phase: Phase::Resumed }).is_empty());
        assert!(f.msg(1, ToCoord::Written { generation: 1, report: report(101) }).is_empty());
        assert!(f.msg(2, ToCoord::Reached { generation: 1, phase: Phase::Resumed }).is_empty());
        assert_eq!(f.core.status().processes[1].state, "writing");
        assert!(!dir.join(manifest::MANIFEST_NAME).exists(), "no manifest before every image is durable");
        std::fs::write(dir.join(manifest::image_file_name(102)), b"img").unwrap();
        let a = f.msg(2, ToCoord::Written { generation: 1, report: report(102) });
        assert!(matches!(sends_to(&a, 9).as_slice(), [FromCoord::Reply(Reply::Done(_))]), "{a:?}");
        assert!(dir.join(manifest::MANIFEST_NAME).exists());

        // A process leaving after it resumed but before its image is durable fails the
        // generation; one leaving after its image is durable does not.
        let a = f.cmd(9, Command::Checkpoint { wait: true, kill_after: false });
        let FromCoord::Checkpoint { dir, .. } = &sends_to(&a, 1)[0] else { panic!() };
        let dir = PathBuf::from(dir);
        for c in [1, 2] {
            f.msg(c, ToCoord::Reached { generation: 2, phase: Phase::Suspended });
        }
        for c in [1, 2] {
            f.msg(c, ToCoord::Reached { generation: 2, phase: Phase::Captured });
        }
        std::fs::write(dir.join(manifest::image_file_name(101)), b"img").unwrap();
        f.msg(1, ToCoord::Written { generation: 2, report: report(101) });
        f.input(Input::Closed(1));
        assert_eq!(f.core.in_progress(), Some(2), "a process that left with a durable image keeps the generation");
        f.msg(2, ToCoord::Reached { generation: 2, phase: Phase::Resumed });
        let a = f.input(Input::Closed(2));
        match sends_to(&a, 9).as_slice() {
            [FromCoord::Reply(Reply::Error { message })] => assert!(message.contains("vpid 102"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert!(!dir.exists());
    }

    fn hello(comp_id: Option<u64>, vpid: i32) -> ToCoord {
        ToCoord::HelloProcess {
            proto: V,
            token: None,
            comp_id,
            vpid,
            vppid: 1,
            real_pid: vpid,
            hostname: crate::hostname(),
            program: format!("prog{vpid}"),
            args: vec![],
            restored_from: None,
        }
    }

    impl Fixture {
        fn input(&mut self, i: Input) -> Vec<Action> {
            self.core.handle(self.now, i)
        }
        fn msg(&mut self, c: ConnId, m: ToCoord) -> Vec<Action> {
            self.input(Input::Message(c, m))
        }
        fn connect(&mut self, c: ConnId, m: ToCoord) -> Vec<Action> {
            assert!(self.input(Input::Connected(c)).is_empty());
            self.msg(c, m)
        }
        fn control(&mut self, c: ConnId) {
            let a = self.connect(c, ToCoord::HelloControl { proto: V, token: None });
            assert!(matches!(a.as_slice(), [Action::Send(x, FromCoord::Welcome { .. })] if *x == c));
        }
        fn cmd(&mut self, c: ConnId, cmd: Command) -> Vec<Action> {
            self.msg(c, ToCoord::Command(cmd))
        }
    }

    fn welcome_id(a: &[Action]) -> u64 {
        match a {
            [Action::Send(_, FromCoord::Welcome { comp_id, .. })] => *comp_id,
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    fn report(vpid: i32) -> ImageReport {
        ImageReport { file: manifest::image_file_name(vpid), bytes: 100, memory_bytes: 80, downtime_us: 5, write_us: 3 }
    }

    #[test]
    fn comp_id_adoption_and_rejection() {
        let mut f = fixture("compid");
        // A restarted process adopts its computation id on an empty coordinator.
        let id = welcome_id(&f.connect(1, hello(Some(0xabc), 10)));
        assert_eq!(id, 0xabc);
        // A fresh process joins the current computation.
        assert_eq!(welcome_id(&f.connect(2, hello(None, 11))), 0xabc);
        // Same id: accepted.
        assert_eq!(welcome_id(&f.connect(3, hello(Some(0xabc), 12))), 0xabc);
        // Another computation: rejected, naming both ids, and the connection is closed.
        let a = f.connect(4, hello(Some(0xdef), 13));
        match a.as_slice() {
            [Action::Send(4, FromCoord::Rejected { reason }), Action::Close(4)] => {
                assert!(reason.contains("0000000000000def") && reason.contains("0000000000000abc"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(f.core.process_count(), 3);
        // Everyone leaves: the id is forgotten and another computation may come.
        for c in 1..=3 {
            f.input(Input::Closed(c));
        }
        assert_eq!(f.core.comp_id(), None);
        assert_eq!(welcome_id(&f.connect(5, hello(Some(0xdef), 13))), 0xdef);
        f.input(Input::Closed(5));
        // A fresh process on an empty coordinator gets a new random id.
        let fresh = welcome_id(&f.connect(6, hello(None, 14)));
        assert_ne!(fresh, 0);
        // The control connection sees the current id.
        let a = f.connect(7, ToCoord::HelloControl { proto: V, token: None });
        assert_eq!(welcome_id(&a), fresh);
    }

    #[test]
    fn wrong_protocol_and_unexpected_messages() {
        let mut f = fixture("proto");
        let a = f.connect(1, ToCoord::HelloControl { proto: V + 1, token: None });
        assert!(matches!(a.as_slice(), [Action::Send(1, FromCoord::Rejected { .. }), Action::Close(1)]));
        // A message before the hello drops the connection.
        f.input(Input::Connected(2));
        let a = f.msg(2, ToCoord::Command(Command::Status));
        assert_eq!(a, vec![Action::Close(2)]);
        // A command from a process drops it.
        f.connect(3, hello(None, 5));
        let a = f.cmd(3, Command::Kill);
        assert_eq!(a, vec![Action::Close(3)]);
        assert_eq!(f.core.process_count(), 0);
        // Messages from unknown connections are ignored.
        assert!(f.msg(99, ToCoord::Command(Command::Status)).is_empty());
    }

    #[test]
    fn token_is_checked_when_configured() {
        let mut f = fixture("token");
        f.core.cfg.token = Some("s3cret".into());
        let a = f.connect(1, ToCoord::HelloControl { proto: V, token: Some("nope".into()) });
        assert!(matches!(a.as_slice(), [Action::Send(1, FromCoord::Rejected { .. }), Action::Close(1)]));
        let a = f.connect(2, ToCoord::HelloControl { proto: V, token: Some("s3cret".into()) });
        assert_eq!(welcome_id(&a), 0);
    }

    fn sends_to(a: &[Action], c: ConnId) -> Vec<FromCoord> {
        a.iter().filter_map(|x| if let Action::Send(y, m) = x { (*y == c).then(|| m.clone()) } else { None }).collect()
    }

    /// Drive one full generation with processes on conns 1 and 2, control on 9.
    #[test]
    fn full_generation() {
        let mut f = fixture("full");
        f.connect(1, hello(Some(0x42), 101));
        f.connect(2, hello(None, 102));
        f.control(9);
        assert_eq!(f.core.status().processes.len(), 2);

        let a = f.cmd(9, Command::Checkpoint { wait: true, kill_after: false });
        let dir = match sends_to(&a, 1).as_slice() {
            [FromCoord::Checkpoint { generation: 1, dir, forked: false }] => PathBuf::from(dir),
            other => panic!("{other:?}"),
        };
        assert!(sends_to(&a, 9).is_empty(), "a waiter gets no immediate reply");
        assert_eq!(dir, manifest::generation_dir(&f.dir, 0x42, 1));
        assert!(dir.is_dir());
        // A second checkpoint without wait names the running generation.
        f.control(8);
        let a = f.cmd(8, Command::Checkpoint { wait: false, kill_after: false });
        assert_eq!(sends_to(&a, 8), vec![FromCoord::Reply(Reply::Started { generation: 1 })]);
        assert!(f.msg(1, ToCoord::Reached { generation: 1, phase: Phase::Suspended }).is_empty());
        assert_eq!(f.core.status().processes[0].state, "suspended");
        // Stale or wrong messages are ignored.
        assert!(f.msg(2, ToCoord::Reached { generation: 7, phase: Phase::Suspended }).is_empty());
        let a = f.msg(2, ToCoord::Reached { generation: 1, phase: Phase::Suspended });
        for c in [1, 2] {
            assert_eq!(sends_to(&a, c), vec![FromCoord::Proceed { generation: 1, phase: Phase::Written }]);
        }
        // A process joining once everyone is suspended does not take part.
        let a = f.connect(3, hello(None, 103));
        assert_eq!(welcome_id(&a), 0x42);
        assert!(f.msg(3, ToCoord::Reached { generation: 1, phase: Phase::Suspended }).is_empty());

        for (c, vpid) in [(1, 101), (2, 102)] {
            std::fs::write(dir.join(manifest::image_file_name(vpid)), b"img").unwrap();
            let a = f.msg(c, ToCoord::Written { generation: 1, report: report(vpid) });
            if c == 2 {
                assert_eq!(sends_to(&a, 1), vec![FromCoord::Proceed { generation: 1, phase: Phase::Resumed }]);
            }
        }
        assert!(f.msg(1, ToCoord::Reached { generation: 1, phase: Phase::Resumed }).is_empty());
        assert!(!dir.join(manifest::MANIFEST_NAME).exists(), "no manifest before everyone resumed");
        let a = f.msg(2, ToCoord::Reached { generation: 1, phase: Phase::Resumed });
        match sends_to(&a, 9).as_slice() {
            [FromCoord::Reply(Reply::Done(s))] => {
                assert_eq!(s.generation, 1);
                assert_eq!(s.bytes, 200);
                assert_eq!(s.max_downtime_us, 5);
                assert_eq!(PathBuf::from(&s.path), dir);
            }
            other => panic!("{other:?}"),
        }
        let m = manifest::read_manifest(&dir).unwrap();
        assert_eq!(m.comp_id, 0x42);
        assert_eq!(m.processes.iter().map(|p| p.vpid).collect::<Vec<_>>(), vec![101, 102]);
        assert_eq!(m.processes[0].image, "proc-101.crimg");
        let comp = manifest::computation_dir(&f.dir, 0x42);
        assert_eq!(std::fs::read_link(comp.join("latest")).unwrap(), PathBuf::from("gen-000001"));
        let st = f.core.status();
        assert_eq!(st.in_progress, None);
        assert_eq!(st.last_complete.unwrap().generation, 1);

        // The next generation includes the late joiner and gets the next number.
        let a = f.cmd(9, Command::Checkpoint { wait: false, kill_after: false });
        assert_eq!(sends_to(&a, 9), vec![FromCoord::Reply(Reply::Started { generation: 2 })]);
        assert_eq!(sends_to(&a, 3).len(), 1);
    }

    #[test]
    fn failure_aborts_and_removes_only_that_generation() {
        let mut f = fixture("fail");
        f.connect(1, hello(Some(7), 1));
        f.connect(2, hello(None, 2));
        f.control(9);
        let a = f.cmd(9, Command::Checkpoint { wait: true, kill_after: true });
        let FromCoord::Checkpoint { dir, .. } = &sends_to(&a, 1)[0] else { panic!() };
        let dir = PathBuf::from(dir);
        let a = f.msg(2, ToCoord::Failed { generation: 1, error: "disk full".into() });
        assert_eq!(sends_to(&a, 1), vec![FromCoord::Abort { generation: 1, reason: "process vpid 2 (prog2) failed: disk full".into() }]);
        match sends_to(&a, 9).as_slice() {
            [FromCoord::Reply(Reply::Error { message })] => {
                assert!(message.contains("vpid 2 (prog2)") && message.contains("disk full"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!a.iter().any(|x| matches!(x, Action::Kill { .. })), "no kill after a failure");
        assert!(!dir.exists());

        // Disconnection during a generation aborts it; the number is not reused.
        let a = f.cmd(9, Command::Checkpoint { wait: true, kill_after: false });
        assert_eq!(sends_to(&a, 1), vec![FromCoord::Checkpoint { generation: 2, dir: manifest::generation_dir(&f.dir, 7, 2).display().to_string(), forked: false }]);
        // A stale answer to the abort of generation 1 is ignored.
        assert!(f.msg(1, ToCoord::Reached { generation: 1, phase: Phase::Resumed }).is_empty());
        f.msg(1, ToCoord::Reached { generation: 2, phase: Phase::Suspended });
        let a = f.input(Input::Closed(2));
        assert!(matches!(sends_to(&a, 1).as_slice(), [FromCoord::Abort { generation: 2, .. }]));
        match sends_to(&a, 9).as_slice() {
            [FromCoord::Reply(Reply::Error { message })] => assert!(message.contains("disconnected"), "{message}"),
            other => panic!("{other:?}"),
        }

        // Timeout.
        f.core.cfg.generation_timeout = Duration::from_secs(5);
        f.cmd(9, Command::Checkpoint { wait: true, kill_after: false });
        assert!(f.core.next_deadline().is_some());
        assert!(f.core.tick(f.now + Duration::from_secs(4)).is_empty());
        let a = f.core.tick(f.now + Duration::from_secs(5));
        match sends_to(&a, 9).as_slice() {
            [FromCoord::Reply(Reply::Error { message })] => assert!(message.contains("timed out") && message.contains("vpid 1"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(f.core.in_progress(), None);
    }

    #[test]
    fn kill_after_complete_and_commands() {
        let mut f = fixture("kill");
        f.control(9);
        let a = f.cmd(9, Command::Checkpoint { wait: true, kill_after: false });
        assert_eq!(sends_to(&a, 9), vec![FromCoord::Reply(Reply::Error { message: "no processes to checkpoint".into() })]);
        f.connect(1, hello(None, std::process::id() as i32 + 1_000_000));
        let vpid = std::process::id() as i32 + 1_000_000;
        let a = f.cmd(9, Command::Checkpoint { wait: true, kill_after: true });
        let FromCoord::Checkpoint { dir, .. } = &sends_to(&a, 1)[0] else { panic!() };
        std::fs::write(PathBuf::from(dir).join(manifest::image_file_name(vpid)), b"x").unwrap();
        f.msg(1, ToCoord::Reached { generation: 1, phase: Phase::Suspended });
        f.msg(1, ToCoord::Written { generation: 1, report: report(vpid) });
        let a = f.msg(1, ToCoord::Reached { generation: 1, phase: Phase::Resumed });
        assert!(matches!(a[0], Action::Send(9, FromCoord::Reply(Reply::Done(_)))));
        assert_eq!(sends_to(&a, 1), vec![FromCoord::Completed { generation: 1 }]);
        assert_eq!(a.last(), Some(&Action::Kill { real_pid: vpid }));

        assert_eq!(sends_to(&f.cmd(9, Command::Keep { keep: 3 }), 9), vec![FromCoord::Reply(Reply::Ok)]);
        assert_eq!(f.core.status().keep, Some(3));
        f.cmd(9, Command::Keep { keep: 0 });
        assert_eq!(f.core.status().keep, None);
        let a = f.cmd(9, Command::Interval { secs: 30 });
        assert_eq!(sends_to(&a, 9), vec![FromCoord::Reply(Reply::Ok)]);
        assert_eq!(f.core.status().interval_secs, 30);
        let a = f.cmd(9, Command::Kill);
        assert_eq!(a, vec![Action::Kill { real_pid: vpid }, Action::Send(9, FromCoord::Reply(Reply::Ok))]);
        let a = f.cmd(9, Command::Quit);
        assert_eq!(a, vec![Action::Send(9, FromCoord::Reply(Reply::Ok)), Action::Exit]);
    }

    #[test]
    fn leaving_while_resuming_completes_the_generation() {
        let mut f = fixture("resumeleave");
        f.connect(1, hello(None, 1));
        f.connect(2, hello(None, 2));
        f.control(9);
        let a = f.cmd(9, Command::Checkpoint { wait: true, kill_after: false });
        let FromCoord::Checkpoint { dir, .. } = &sends_to(&a, 1)[0] else { panic!() };
        let dir = PathBuf::from(dir);
        for c in [1, 2] {
            f.msg(c, ToCoord::Reached { generation: 1, phase: Phase::Suspended });
        }
        for (c, vpid) in [(1, 1), (2, 2)] {
            std::fs::write(dir.join(manifest::image_file_name(vpid)), b"i").unwrap();
            f.msg(c, ToCoord::Written { generation: 1, report: report(vpid) });
        }
        f.msg(1, ToCoord::Reached { generation: 1, phase: Phase::Resumed });
        let a = f.input(Input::Closed(2));
        assert!(matches!(sends_to(&a, 9).as_slice(), [FromCoord::Reply(Reply::Done(_))]), "{a:?}");
        assert_eq!(manifest::read_manifest(&dir).unwrap().processes.len(), 2);
    }

    #[test]
    fn huge_interval_or_timeout_never_overflows() {
        let mut f = fixture("huge");
        f.core.cfg.generation_timeout = Duration::from_secs(u64::MAX);
        f.control(9);
        f.connect(1, hello(None, 1));
        f.cmd(9, Command::Interval { secs: u64::MAX });
        assert_eq!(f.core.next_deadline(), None);
        f.cmd(9, Command::Checkpoint { wait: false, kill_after: false });
        assert_eq!(f.core.next_deadline(), None);
        assert!(f.core.tick(f.now + Duration::from_secs(1 << 40)).is_empty());
    }

    /// Absurd numbers and repeated requests from a process neither crash the coordinator
    /// nor grow its memory.
    #[test]
    fn hostile_reports_and_request_floods_are_harmless() {
        let mut f = fixture("hostile");
        f.connect(1, hello(None, 1));
        f.connect(2, hello(None, 2));
        f.control(9);
        f.msg(1, ToCoord::RequestCheckpoint);
        f.msg(1, ToCoord::Reached { generation: 1, phase: Phase::Suspended });
        for _ in 0..1000 {
            f.msg(1, ToCoord::RequestCheckpoint);
            f.cmd(9, Command::Checkpoint { wait: true, kill_after: false });
        }
        assert_eq!(f.core.pending_requesters.len(), 1);
        assert_eq!(f.core.generation.as_ref().unwrap().waiters.len(), 1);
        f.msg(2, ToCoord::Reached { generation: 1, phase: Phase::Suspended });
        let dir = f.core.generation.as_ref().unwrap().dir.clone();
        for c in [1, 2] {
            std::fs::write(dir.join(manifest::image_file_name(c as i32)), b"i").unwrap();
            let mut r = report(c as i32);
            r.bytes = u64::MAX;
            r.downtime_us = u64::MAX;
            f.msg(c, ToCoord::Written { generation: 1, report: r });
        }
        assert_eq!(f.core.status().progress.unwrap().bytes, u64::MAX);
        f.msg(1, ToCoord::Reached { generation: 1, phase: Phase::Resumed });
        let a = f.msg(2, ToCoord::Reached { generation: 1, phase: Phase::Resumed });
        assert!(matches!(sends_to(&a, 9).as_slice(), [FromCoord::Reply(Reply::Done(s))] if s.bytes == u64::MAX), "{a:?}");
        // The follow-up generation the flood asked for: one.
        assert_eq!(f.core.in_progress(), Some(2));
    }

    #[test]
    fn bad_image_report_fails_the_generation() {
        let mut f = fixture("badreport");
        f.connect(1, hello(None, 1));
        f.control(9);
        f.cmd(9, Command::Checkpoint { wait: true, kill_after: false });
        f.msg(1, ToCoord::Reached { generation: 1, phase: Phase::Suspended });
        let mut r = report(1);
        r.file = "../../etc/passwd".into();
        let a = f.msg(1, ToCoord::Written { generation: 1, report: r });
        assert!(matches!(sends_to(&a, 1).as_slice(), [FromCoord::Abort { .. }]));
        assert!(matches!(sends_to(&a, 9).as_slice(), [FromCoord::Reply(Reply::Error { message })] if message.contains("invalid image name")));
    }

    #[test]
    fn interval_timer_rearms_after_each_generation() {
        let mut f = fixture("interval");
        f.core.cfg.interval_secs = 10;
        assert_eq!(f.core.next_deadline(), None);
        f.connect(1, hello(None, 1));
        let t0 = f.now;
        assert_eq!(f.core.next_deadline(), Some(t0 + Duration::from_secs(10)));
        assert!(f.core.tick(t0 + Duration::from_secs(9)).is_empty());
        let a = f.core.tick(t0 + Duration::from_secs(10));
        assert!(matches!(sends_to(&a, 1).as_slice(), [FromCoord::Checkpoint { generation: 1, .. }]));
        // No interval deadline while a generation runs (only its timeout).
        assert_eq!(f.core.next_deadline(), Some(t0 + Duration::from_secs(10) + DEFAULT_GENERATION_TIMEOUT_FOR_TEST));
        f.now = t0 + Duration::from_secs(12);
        f.msg(1, ToCoord::Failed { generation: 1, error: "x".into() });
        assert_eq!(f.core.next_deadline(), Some(t0 + Duration::from_secs(22)));
    }

    /// Run generation `n` with the processes on conns 1..=k (vpid = conn) to completion.
    fn complete_generation(f: &mut Fixture, ctl: ConnId, procs: &[ConnId]) -> (u64, PathBuf, Vec<Action>) {
        let a = f.cmd(ctl, Command::Checkpoint { wait: true, kill_after: false });
        let (n, dir) = match &sends_to(&a, procs[0])[..] {
            [FromCoord::Checkpoint { generation, dir, .. }] => (*generation, PathBuf::from(dir)),
            other => panic!("{other:?}"),
        };
        for &c in procs {
            f.msg(c, ToCoord::Reached { generation: n, phase: Phase::Suspended });
        }
        for &c in procs {
            std::fs::write(dir.join(manifest::image_file_name(c as i32)), b"image").unwrap();
            f.msg(c, ToCoord::Written { generation: n, report: report(c as i32) });
        }
        let mut last = Vec::new();
        for &c in procs {
            last = f.msg(c, ToCoord::Reached { generation: n, phase: Phase::Resumed });
        }
        assert!(matches!(sends_to(&last, ctl).as_slice(), [FromCoord::Reply(Reply::Done(_))]), "{last:?}");
        (n, dir, last)
    }

    #[test]
    fn retention_keeps_exactly_n_and_never_counts_partial_directories() {
        let mut f = fixture("keep");
        f.core.cfg.keep = Some(2);
        f.connect(1, hello(Some(0x77), 1));
        f.control(9);
        let comp = manifest::computation_dir(&f.dir, 0x77);
        let (_, d1, _) = complete_generation(&mut f, 9, &[1]);
        let (_, d2, _) = complete_generation(&mut f, 9, &[1]);
        assert!(d1.is_dir() && d2.is_dir());
        // A generation that fails leaves nothing; a stray partial directory (a coordinator
        // that died mid-checkpoint) does not count as kept and goes once it is older.
        f.cmd(9, Command::Checkpoint { wait: true, kill_after: false });
        f.msg(1, ToCoord::Failed { generation: 3, error: "x".into() });
        std::fs::create_dir(comp.join("gen-000004")).unwrap();
        f.core.min_next_generation = 5;
        let (n, d5, _) = complete_generation(&mut f, 9, &[1]);
        assert_eq!(n, 5);
        assert_eq!(manifest::complete_generations(&comp), vec![2, 5]);
        assert_eq!(manifest::incomplete_generations(&comp), Vec::<u64>::new());
        assert!(!d1.exists() && d2.is_dir() && d5.is_dir());
        assert_eq!(std::fs::read_link(comp.join("latest")).unwrap(), PathBuf::from("gen-000005"));
        complete_generation(&mut f, 9, &[1]);
        assert_eq!(manifest::complete_generations(&comp), vec![5, 6]);
        let listed: Vec<(u64, bool)> = f.core.generations_on_disk().iter().map(|g| (g.generation, g.latest)).collect();
        assert_eq!(listed, vec![(5, false), (6, true)]);
        // The manifest carries hosts, the command line, timings and checksums.
        let m = manifest::read_manifest(&manifest::generation_dir(&f.dir, 0x77, 6)).unwrap();
        assert_eq!(m.hosts, vec![crate::hostname()]);
        assert_eq!(m.bytes, 100);
        assert!(m.completed_unix_ms >= m.started_unix_ms && m.started_unix_ms > 0);
        assert_eq!(m.processes[0].header_crc32c, crc32c::crc32c(b"image"));
    }

    #[test]
    fn checkpoint_requests_from_processes() {
        let mut f = fixture("request");
        f.connect(1, hello(Some(5), 1));
        f.connect(2, hello(None, 2));
        // A request with nothing running starts a generation for everyone.
        let a = f.msg(2, ToCoord::RequestCheckpoint);
        for c in [1, 2] {
            assert!(matches!(sends_to(&a, c).as_slice(), [FromCoord::Checkpoint { generation: 1, .. }]), "{a:?}");
        }
        // A request from a process not yet suspended is covered by it.
        assert!(f.msg(1, ToCoord::RequestCheckpoint).is_empty());
        // One from a process that already suspended (sent before, arriving late) is not:
        // a second generation follows.
        f.msg(2, ToCoord::Reached { generation: 1, phase: Phase::Suspended });
        assert!(f.msg(2, ToCoord::RequestCheckpoint).is_empty());
        // A process in a critical section is shown as holding the generation.
        f.msg(1, ToCoord::Held { generation: 1 });
        let st = f.core.status();
        assert_eq!(st.processes.iter().map(|p| p.state.as_str()).collect::<Vec<_>>(), vec!["held", "suspended"]);
        let p = st.progress.unwrap();
        assert_eq!((p.generation, p.phase.as_str(), p.done, p.processes, p.held_by), (1, "suspend", 1, 2, vec![1]));
        let a = f.msg(1, ToCoord::Failed { generation: 1, error: "critical section too long".into() });
        // Everyone hears of the abort, the requesters that it covered hear that their
        // request failed, and the follow-up generation starts.
        assert!(
            matches!(
                sends_to(&a, 2).as_slice(),
                [FromCoord::Abort { generation: 1, .. }, FromCoord::RequestFailed { generation: 1, .. }, FromCoord::Checkpoint { generation: 2, .. }]
            ),
            "{a:?}"
        );
        assert!(
            matches!(sends_to(&a, 1).as_slice(), [FromCoord::Abort { generation: 1, .. }, FromCoord::RequestFailed { generation: 1, .. }, FromCoord::Checkpoint { generation: 2, .. }]),
            "{a:?}"
        );
        // Generation 2 answers the request of process 2 when it completes.
        for c in [1, 2] {
            f.msg(c, ToCoord::Reached { generation: 2, phase: Phase::Suspended });
        }
        let dir = manifest::generation_dir(&f.dir, 5, 2);
        for c in [1, 2] {
            std::fs::write(dir.join(manifest::image_file_name(c as i32)), b"i").unwrap();
            f.msg(c, ToCoord::Written { generation: 2, report: report(c as i32) });
        }
        f.msg(1, ToCoord::Reached { generation: 2, phase: Phase::Resumed });
        let a = f.msg(2, ToCoord::Reached { generation: 2, phase: Phase::Resumed });
        assert_eq!(sends_to(&a, 2), vec![FromCoord::Completed { generation: 2 }]);
        assert_eq!(f.core.in_progress(), None, "no further generation");
        // With no process... a request that cannot start anything is answered.
        let mut g = fixture("request2");
        g.connect(1, hello(Some(6), 1));
        g.core.cfg.ckpt_dir = PathBuf::from("/proc/nonexistent-dir");
        let a = g.msg(1, ToCoord::RequestCheckpoint);
        assert!(matches!(sends_to(&a, 1).as_slice(), [FromCoord::RequestFailed { .. }]), "{a:?}");
    }

    #[test]
    fn operator_hooks_get_the_generation() {
        let mut f = fixture("hooks");
        f.core.cfg.on_checkpoint = Some("echo ckpt".into());
        f.core.cfg.on_restart = Some("echo restart".into());
        let mut h = hello(Some(0x99), 1);
        if let ToCoord::HelloProcess { restored_from, .. } = &mut h {
            *restored_from = Some(4);
        }
        f.input(Input::Connected(1));
        let a = f.msg(1, h.clone());
        let hook = a.iter().find_map(|x| if let Action::RunHook { cmd, env } = x { Some((cmd.clone(), env.clone())) } else { None });
        let (cmd, env) = hook.expect("on-restart hook");
        assert_eq!(cmd, "echo restart");
        let get = |env: &[(String, String)], k: &str| env.iter().find(|(x, _)| x == k).map(|(_, v)| v.clone()).unwrap();
        assert_eq!(get(&env, "CR_GENERATION"), "4");
        assert_eq!(get(&env, "CR_HOOK"), "restart");
        assert_eq!(PathBuf::from(get(&env, "CR_GENERATION_DIR")), manifest::generation_dir(&f.dir, 0x99, 4));
        // A second process of the same restart does not run it again.
        f.input(Input::Connected(2));
        if let ToCoord::HelloProcess { vpid, .. } = &mut h {
            *vpid = 2;
        }
        assert!(!f.msg(2, h).iter().any(|x| matches!(x, Action::RunHook { .. })));
        f.control(9);
        let (n, dir, last) = complete_generation(&mut f, 9, &[1, 2]);
        let (cmd, env) = last
            .iter()
            .find_map(|x| if let Action::RunHook { cmd, env } = x { Some((cmd.clone(), env.clone())) } else { None })
            .expect("on-checkpoint hook");
        assert_eq!(cmd, "echo ckpt");
        assert_eq!(get(&env, "CR_GENERATION"), n.to_string());
        assert_eq!(PathBuf::from(get(&env, "CR_GENERATION_DIR")), dir);
    }

    const DEFAULT_GENERATION_TIMEOUT_FOR_TEST: Duration = crate::DEFAULT_GENERATION_TIMEOUT;

    #[test]
    fn exit_when_idle() {
        let mut f = fixture("idle");
        f.core.cfg.exit_when_idle = true;
        let t0 = f.now;
        assert_eq!(f.core.next_deadline(), Some(t0 + crate::DEFAULT_IDLE_GRACE));
        // Control connections do not count.
        f.control(9);
        assert!(f.core.tick(t0 + Duration::from_secs(59)).is_empty());
        f.connect(1, hello(None, 1));
        assert_eq!(f.core.next_deadline(), None);
        assert!(f.core.tick(t0 + Duration::from_secs(100)).is_empty());
        assert_eq!(f.input(Input::Closed(1)), vec![Action::Exit]);

        let mut g = fixture("idle2");
        g.core.cfg.exit_when_idle = true;
        let t1 = g.now;
        assert!(g.core.tick(t1 + Duration::from_secs(59)).is_empty());
        assert_eq!(g.core.tick(t1 + Duration::from_secs(60)), vec![Action::Exit]);
    }

    /// Process trees: a process saying hello while the generation waits for processes to
    /// suspend takes part; an exiting process is waited for until it is gone; an exec'ing
    /// process is replaced by the hello of the same real pid; an excluded one is listed.
    #[test]
    fn tree_joins_leaves_execs_and_exclusions() {
        let mut f = fixture("tree");
        f.connect(1, hello(Some(0x42), 101));
        f.connect(2, hello(None, 102));
        f.control(9);
        let a = f.cmd(9, Command::Checkpoint { wait: true, kill_after: false });
        let dir = match sends_to(&a, 1).as_slice() {
            [FromCoord::Checkpoint { generation: 1, dir, .. }] => PathBuf::from(dir),
            other => panic!("{other:?}"),
        };
        // A child of 1 registers while 1 is still in its fork: it joins generation 1.
        let a = f.connect(3, hello(None, 103));
        assert!(matches!(sends_to(&a, 3).as_slice(), [FromCoord::Welcome { .. }, FromCoord::Checkpoint { generation: 1, .. }]), "{a:?}");
        // 2 is exiting: its disconnect is no failure, and the generation waits for it.
        assert!(f.msg(2, ToCoord::Leaving { exec: false }).is_empty());
        assert!(f.msg(1, ToCoord::Reached { generation: 1, phase: Phase::Suspended }).is_empty());
        // 3 is exec'ing: its new program (same real pid) takes its place.
        assert!(f.msg(3, ToCoord::Leaving { exec: true }).is_empty());
        let a = f.input(Input::Closed(3));
        assert!(a.is_empty(), "{a:?}");
        let a = f.input(Input::Closed(2));
        assert!(a.is_empty(), "the generation still waits for the exec'd program: {a:?}");
        assert_eq!(f.core.process_count(), 2, "1 and the awaited exec");
        let a = f.connect(4, hello(None, 103));
        assert!(matches!(sends_to(&a, 4).as_slice(), [FromCoord::Welcome { .. }, FromCoord::Checkpoint { generation: 1, .. }]), "{a:?}");
        // 4 reports two static programs it started: excluded; the one that is gone (no
        // such pid on this host) is pruned, the live one (this test) is listed.
        let me = std::process::id() as i32;
        for pid in [me, i32::MAX - 1] {
            let m = ToCoord::Excluded { vpid: pid, real_pid: pid, program: "static".into(), reason: "statically linked".into() };
            assert!(f.msg(4, m).is_empty());
        }
        let a = f.msg(4, ToCoord::Reached { generation: 1, phase: Phase::Suspended });
        assert_eq!(sends_to(&a, 1), vec![FromCoord::Proceed { generation: 1, phase: Phase::Written }]);
        for (c, vpid) in [(1, 101), (4, 103)] {
            std::fs::write(dir.join(manifest::image_file_name(vpid)), b"img").unwrap();
            f.msg(c, ToCoord::Written { generation: 1, report: report(vpid) });
        }
        f.msg(1, ToCoord::Reached { generation: 1, phase: Phase::Resumed });
        let a = f.msg(4, ToCoord::Reached { generation: 1, phase: Phase::Resumed });
        assert!(matches!(sends_to(&a, 9).as_slice(), [FromCoord::Reply(Reply::Done(_))]), "{a:?}");
        let m = manifest::read_manifest(&dir).unwrap();
        let vpids: Vec<i32> = m.processes.iter().map(|p| p.vpid).collect();
        assert_eq!(vpids, vec![101, 103]);
        assert_eq!(m.excluded.iter().map(|e| e.real_pid).collect::<Vec<_>>(), vec![me], "{m:?}");
    }

    /// An exec'ing process that never says hello again is given up after a while: the
    /// generation waiting for it goes on without it and names it excluded.
    #[test]
    fn exec_without_hello_is_given_up() {
        let mut f = fixture("execlost");
        f.connect(1, hello(Some(0x42), 101));
        f.connect(2, hello(None, 102));
        f.control(9);
        assert!(f.msg(2, ToCoord::Leaving { exec: true }).is_empty());
        f.input(Input::Closed(2));
        let a = f.cmd(9, Command::Checkpoint { wait: true, kill_after: false });
        let dir = match sends_to(&a, 1).as_slice() {
            [FromCoord::Checkpoint { generation: 1, dir, .. }] => PathBuf::from(dir),
            other => panic!("{other:?}"),
        };
        let a = f.msg(1, ToCoord::Reached { generation: 1, phase: Phase::Suspended });
        assert!(a.is_empty(), "waits for the exec'd process: {a:?}");
        let later = f.now + EXEC_REHELLO + Duration::from_secs(1);
        let a = f.core.tick(later);
        assert_eq!(sends_to(&a, 1), vec![FromCoord::Proceed { generation: 1, phase: Phase::Written }]);
        std::fs::write(dir.join(manifest::image_file_name(101)), b"img").unwrap();
        f.msg(1, ToCoord::Written { generation: 1, report: report(101) });
        f.msg(1, ToCoord::Reached { generation: 1, phase: Phase::Resumed });
        assert_eq!(manifest::read_manifest(&dir).unwrap().processes.len(), 1);
    }
}
