//! Self-update (the seed's claims 9, 19 and 25): a campaign may carry a new `baton-node`.
//!
//! Such a campaign distributes a package under the reserved name [`AGENT_PACKAGE`] with
//! the manifest's `self_update` flag. A node verifies it like any package; its install
//! step is not the install command but the checks here (an ELF executable for this
//! node's own platform), then a trial run of the new executable and the switch to it (the
//! node's shell, `node/src/upgrade.rs`). The install step of an agent package starts only
//! once the node's children hold the package or were given up
//! ([`crate::receiver::NodeCampaign`]), as the node stops relaying while it switches.

use thiserror::Error;

use crate::chunk::Hash;
use crate::manifest::Manifest;

/// The reserved package name of the node agent's own executable.
pub const AGENT_PACKAGE: &str = "baton-node";

/// Bytes of an ELF header read to check a file: identification, type and machine.
pub const ELF_HEADER_LEN: usize = 20;

/// Is this manifest a new agent (the reserved name and the self-update flag)?
pub fn is_agent_package(m: &Manifest) -> bool {
    m.self_update && m.name == AGENT_PACKAGE
}

/// What an ELF header says about the platform an executable runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ElfTarget {
    /// `EI_CLASS`: 1 = 32-bit, 2 = 64-bit.
    pub class: u8,
    /// `EI_DATA`: 1 = little-endian, 2 = big-endian.
    pub data: u8,
    /// `e_machine` (62 = x86-64, 183 = AArch64, ...).
    pub machine: u16,
}

impl std::fmt::Display for ElfTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bits = if self.class == 1 { "32-bit" } else { "64-bit" };
        let endian = if self.data == 1 {
            "little-endian"
        } else {
            "big-endian"
        };
        let machine = match self.machine {
            3 => "x86".to_string(),
            40 => "ARM".to_string(),
            62 => "x86-64".to_string(),
            183 => "AArch64".to_string(),
            243 => "RISC-V".to_string(),
            m => format!("machine {m}"),
        };
        write!(f, "{bits} {endian} {machine}")
    }
}

/// Why a file is not a new agent for this node.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum AgentError {
    #[error("the new agent is {0} bytes, shorter than an ELF header: not an executable")]
    TooShort(usize),
    #[error("the new agent is not an ELF file (no \\x7fELF magic): not a Linux executable")]
    NotElf,
    #[error("the new agent has an invalid ELF header: {0}")]
    BadHeader(String),
    #[error(
        "the new agent is an ELF file of type {0}, not an executable (2) or a position-independent executable (3)"
    )]
    NotExecutable(u16),
    #[error(
        "the new agent is built for {theirs}, this node runs {ours}: not installed; publish a baton-node built for this platform"
    )]
    OtherPlatform { ours: ElfTarget, theirs: ElfTarget },
}

/// Reads the platform of an ELF executable from its first [`ELF_HEADER_LEN`] bytes.
pub fn elf_target(header: &[u8]) -> Result<ElfTarget, AgentError> {
    if header.len() < ELF_HEADER_LEN {
        return Err(AgentError::TooShort(header.len()));
    }
    if header[..4] != *b"\x7fELF" {
        return Err(AgentError::NotElf);
    }
    let (class, data) = (header[4], header[5]);
    if !matches!(class, 1 | 2) {
        return Err(AgentError::BadHeader(format!("class {class}")));
    }
    let u16_at = |i: usize| {
        let b = [header[i], header[i + 1]];
        match data {
            1 => Ok(u16::from_le_bytes(b)),
            2 => Ok(u16::from_be_bytes(b)),
            d => Err(AgentError::BadHeader(format!("byte order {d}"))),
        }
    };
    let kind = u16_at(16)?;
    if !matches!(kind, 2 | 3) {
        return Err(AgentError::NotExecutable(kind));
    }
    Ok(ElfTarget {
        class,
        data,
        machine: u16_at(18)?,
    })
}

/// Checks that `package` (the new agent's first bytes) is an executable for the platform
/// of `own` (the running agent's first bytes, `/proc/self/exe`).
pub fn check_agent_binary(package: &[u8], own: &[u8]) -> Result<ElfTarget, AgentError> {
    let theirs = elf_target(package)?;
    let ours = elf_target(own)?;
    if theirs != ours {
        return Err(AgentError::OtherPlatform { ours, theirs });
    }
    Ok(theirs)
}

/// What the install step of an agent package does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentDecision {
    /// This process runs that package already: install it in the store, report installed.
    Running,
    /// Report failed with this reason.
    Failed(String),
    /// Stop and try it (the trial, then the switch).
    Upgrade,
}

/// Decides the install step of an agent package whose root hash is `package_root`, from
/// what the shell read: the running agent's build id (`own_build`, the BLAKE3 of its
/// executable) and first bytes, the package's first bytes (or why they could not be
/// read), and the reason an earlier try of this build failed here, if it did (a build
/// that failed is not tried again by itself).
pub fn agent_install_decision(
    own_build: &Hash,
    own_header: &[u8],
    package_root: &Hash,
    package_header: Result<&[u8], String>,
    failed_before: Option<&str>,
) -> AgentDecision {
    if own_build == package_root {
        return AgentDecision::Running;
    }
    if let Some(reason) = failed_before {
        return AgentDecision::Failed(reason.trim().to_string());
    }
    match package_header.map(|h| check_agent_binary(h, own_header)) {
        Ok(Ok(_)) => AgentDecision::Upgrade,
        Ok(Err(e)) => AgentDecision::Failed(e.to_string()),
        Err(e) => AgentDecision::Failed(e),
    }
}

/// A new agent may start this often after the switch without reporting its install.
pub const MAX_PROBATION_STARTS: u32 = 3;

/// Where an agent stands at start, given the switch recorded as pending.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probation {
    /// No switch pending, or it was to another build (the previous agent runs again): the
    /// record is cleared.
    None,
    /// This agent is on probation; this is its `n`th start (to be recorded).
    OnProbation(u32),
    /// This agent started `n` times without reporting (a crash loop): roll back.
    CrashLoop(u32),
}

/// The probation rule at an agent's start: `pending` is the build the last switch went
/// to (if one is recorded), `starts` how many times it started since.
pub fn probation_at_start(own_build: &Hash, pending: Option<&Hash>, starts: u32) -> Probation {
    match pending {
        Some(b) if b == own_build => {
            let n = starts.saturating_add(1);
            if n > MAX_PROBATION_STARTS {
                Probation::CrashLoop(n)
            } else {
                Probation::OnProbation(n)
            }
        }
        _ => Probation::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_install_decision_of_an_agent_package() {
        let own = [7u8; 32];
        let other = [8u8; 32];
        let elf = |machine: u8| {
            let mut h = vec![
                0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, machine, 0,
            ];
            h.truncate(ELF_HEADER_LEN);
            h
        };
        let x86 = elf(0x3e);
        let arm = elf(0xb7);
        let decide = |root: &Hash, pkg: Result<&[u8], String>, failed: Option<&str>| {
            agent_install_decision(&own, &x86, root, pkg, failed)
        };
        assert_eq!(decide(&own, Ok(&arm), Some("x")), AgentDecision::Running);
        assert_eq!(decide(&other, Ok(&x86), None), AgentDecision::Upgrade);
        assert_eq!(
            decide(&other, Ok(&x86), Some("exited at start\n")),
            AgentDecision::Failed("exited at start".into())
        );
        assert!(
            matches!(decide(&other, Ok(&arm), None), AgentDecision::Failed(r) if r.contains("AArch64") || r.contains("machine"))
        );
        assert_eq!(
            decide(&other, Err("cannot read".into()), None),
            AgentDecision::Failed("cannot read".into())
        );
    }

    #[test]
    fn probation_counts_starts_of_the_pending_build_only() {
        let (own, other) = ([1u8; 32], [2u8; 32]);
        assert_eq!(probation_at_start(&own, None, 5), Probation::None);
        assert_eq!(probation_at_start(&own, Some(&other), 0), Probation::None);
        assert_eq!(probation_at_start(&own, Some(&own), 0), Probation::OnProbation(1));
        assert_eq!(
            probation_at_start(&own, Some(&own), MAX_PROBATION_STARTS - 1),
            Probation::OnProbation(MAX_PROBATION_STARTS)
        );
        assert_eq!(
            probation_at_start(&own, Some(&own), MAX_PROBATION_STARTS),
            Probation::CrashLoop(MAX_PROBATION_STARTS + 1)
        );
    }

    fn header(class: u8, data: u8, kind: u16, machine: u16) -> Vec<u8> {
        let mut h = b"\x7fELF".to_vec();
        h.extend_from_slice(&[class, data, 1, 0]);
        h.extend_from_slice(&[0; 8]);
        if data == 2 {
            h.extend_from_slice(&kind.to_be_bytes());
            h.extend_from_slice(&machine.to_be_bytes());
        } else {
            h.extend_from_slice(&kind.to_le_bytes());
            h.extend_from_slice(&machine.to_le_bytes());
        }
        h
    }

    #[test]
    fn an_executable_for_the_same_platform_passes() {
        let x86 = header(2, 1, 3, 62);
        let t = check_agent_binary(&header(2, 1, 2, 62), &x86).unwrap();
        assert_eq!(t.machine, 62);
        assert_eq!(t.to_string(), "64-bit little-endian x86-64");
    }

    #[test]
    fn other_platforms_and_non_executables_are_refused_with_a_reason() {
        let own = header(2, 1, 3, 62);
        let e = check_agent_binary(&header(2, 1, 3, 183), &own).unwrap_err();
        assert!(
            e.to_string().contains("built for 64-bit little-endian AArch64"),
            "{e}"
        );
        assert!(matches!(
            check_agent_binary(&header(1, 1, 3, 62), &own),
            Err(AgentError::OtherPlatform { .. })
        ));
        assert!(matches!(
            check_agent_binary(&header(2, 2, 3, 62), &own),
            Err(AgentError::OtherPlatform { .. })
        ));
        // a shared object or a relocatable file is not an executable
        assert_eq!(
            check_agent_binary(&header(2, 1, 1, 62), &own),
            Err(AgentError::NotExecutable(1))
        );
        assert_eq!(
            check_agent_binary(b"#!/bin/sh\nexit 0\n\0\0\0\0\0", &own),
            Err(AgentError::NotElf)
        );
        assert_eq!(check_agent_binary(b"\x7fELF", &own), Err(AgentError::TooShort(4)));
        assert!(matches!(
            check_agent_binary(&header(3, 1, 3, 62), &own),
            Err(AgentError::BadHeader(_))
        ));
    }

    #[test]
    fn only_the_reserved_name_with_the_flag_is_an_agent() {
        let nms = crate::id::keypair_from_seed(1);
        let mut m = crate::manifest::tests::sample(&nms, vec![crate::id::NodeId::of(&nms)], b"x");
        assert!(!is_agent_package(&m));
        m.name = AGENT_PACKAGE.into();
        assert!(!is_agent_package(&m));
        m.self_update = true;
        assert!(is_agent_package(&m));
        m.name = "frob".into();
        assert!(!is_agent_package(&m));
    }
}
