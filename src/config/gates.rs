//! `--feature-gates`, the flag etcd 3.6 introduced for its alpha and beta
//! features: `Name=true|false` pairs, with etcd's gate names, its pseudo-gates
//! `AllAlpha` and `AllBeta`, and its error texts. Each gate either maps to a
//! setting of etcd-rs or, when set, is reported at start as having no effect.

use super::Draft;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Alpha,
    Beta,
}

struct Gate {
    name: &'static str,
    stage: Stage,
    default: bool,
    /// The `--experimental-*` flag etcd 3.5 had for this feature, if any.
    experimental_flag: Option<&'static str>,
    /// What etcd-rs does with the gate: `None` when it maps to a setting.
    no_effect: Option<&'static str>,
}

/// etcd 3.6/3.7's server feature gates.
const GATES: &[Gate] = &[
    Gate {
        name: "CompactHashCheck",
        stage: Stage::Alpha,
        default: false,
        experimental_flag: Some("experimental-compact-hash-check-enabled"),
        no_effect: Some("the leader does not compare compaction hashes with followers"),
    },
    Gate {
        name: "FastLeaseKeepAlive",
        stage: Stage::Alpha,
        default: false,
        experimental_flag: None,
        no_effect: Some("keep-alives wait for the applied index as etcd's default does"),
    },
    Gate {
        name: "InitialCorruptCheck",
        stage: Stage::Alpha,
        default: false,
        experimental_flag: Some("experimental-initial-corrupt-check"),
        no_effect: None,
    },
    Gate {
        name: "LeaseCheckpoint",
        stage: Stage::Alpha,
        default: false,
        experimental_flag: Some("experimental-enable-lease-checkpoint"),
        no_effect: Some("lease TTLs are not checkpointed to followers"),
    },
    Gate {
        name: "LeaseCheckpointPersist",
        stage: Stage::Alpha,
        default: false,
        experimental_flag: Some("experimental-enable-lease-checkpoint-persist"),
        no_effect: Some("lease TTLs are not checkpointed to followers"),
    },
    Gate {
        name: "SetMemberLocalAddr",
        stage: Stage::Alpha,
        default: false,
        experimental_flag: None,
        no_effect: Some("peer connections use the address the system chooses"),
    },
    Gate {
        name: "StopGRPCServiceOnDefrag",
        stage: Stage::Alpha,
        default: false,
        experimental_flag: Some("experimental-stop-grpc-service-on-defrag"),
        no_effect: Some("the gRPC health service keeps serving during a defragmentation"),
    },
    Gate {
        name: "TxnModeWriteWithSharedBuffer",
        stage: Stage::Beta,
        default: true,
        experimental_flag: Some("experimental-txn-mode-write-with-shared-buffer"),
        no_effect: Some("write transactions have no separate read buffer to share"),
    },
];

fn gate(name: &str) -> Option<&'static Gate> {
    GATES.iter().find(|g| g.name == name)
}

/// Parses a `--feature-gates` value as etcd does (Go's `strconv.ParseBool`
/// for the values) and records the gates in the draft.
pub(super) fn set(d: &mut Draft, value: &str) -> Result<(), String> {
    let mut pairs = Vec::new();
    for item in value.split(',') {
        if item.is_empty() {
            continue;
        }
        let (k, v) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => return Err(format!("missing bool value for {}", item.trim())),
        };
        let b = match v {
            "1" | "t" | "T" | "true" | "TRUE" | "True" => true,
            "0" | "f" | "F" | "false" | "FALSE" | "False" => false,
            _ => {
                return Err(format!(
                    "invalid value of {k}={v}, err: strconv.ParseBool: parsing {v:?}: invalid syntax"
                ));
            }
        };
        if k != "AllAlpha" && k != "AllBeta" && gate(k).is_none() {
            return Err(format!("unrecognized feature gate: {k}"));
        }
        pairs.push((k.to_string(), b));
    }
    d.feature_gates_text = value.to_string();
    d.feature_gates = pairs;
    Ok(())
}

/// The value of every gate after `--feature-gates`: explicit pairs win over
/// `AllAlpha`/`AllBeta`, which set the gates of their stage left unset.
fn effective(pairs: &[(String, bool)]) -> Vec<(&'static Gate, bool, bool)> {
    let explicit = |name: &str| pairs.iter().rev().find(|(k, _)| k == name).map(|p| p.1);
    let all_alpha = explicit("AllAlpha");
    let all_beta = explicit("AllBeta");
    GATES
        .iter()
        .map(|g| {
            let bulk = match g.stage {
                Stage::Alpha => all_alpha,
                Stage::Beta => all_beta,
            };
            match explicit(g.name).or(bulk) {
                Some(v) => (g, v, true),
                None => (g, g.default, false),
            }
        })
        .collect()
}

/// Applies the gates to the configuration once every source is read: the
/// conflict with a 3.5 `--experimental-*` flag fails as in etcd, a mapped gate
/// sets its setting, any other gate set explicitly is reported.
pub(super) fn finish(d: &mut Draft) -> Result<(), String> {
    let gates = effective(&d.feature_gates);
    for (g, value, _) in &gates {
        let Some(flag) = g.experimental_flag else {
            continue;
        };
        if d.set.contains_key(flag) && d.feature_gates_text.contains(g.name) {
            let flag_value = match g.name {
                "InitialCorruptCheck" => d.cfg.experimental_initial_corrupt_check,
                "LeaseCheckpoint" => d.lease_checkpoint,
                "LeaseCheckpointPersist" => d.lease_checkpoint_persist,
                _ => *value,
            };
            return Err(format!(
                "cannot specify both flags: --{flag}={flag_value} and --feature-gates={name}={value} at the same time, please just use --feature-gates={name}={value}",
                name = g.name
            ));
        }
    }
    for (g, value, explicit) in gates {
        if !explicit {
            continue;
        }
        match g.name {
            "InitialCorruptCheck" => d.cfg.experimental_initial_corrupt_check = value,
            "LeaseCheckpoint" => d.lease_checkpoint = value,
            "LeaseCheckpointPersist" => d.lease_checkpoint_persist = value,
            _ => {}
        }
        if let Some(why) = g.no_effect {
            d.cfg.warnings.push(format!(
                "feature gate {}={value} has no effect in etcd-rs: {why}",
                g.name
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(v: &str) -> Result<Vec<(String, bool)>, String> {
        let mut d = Draft::new();
        set(&mut d, v).map(|_| d.feature_gates)
    }

    #[test]
    fn parses_as_etcd() {
        assert_eq!(
            parsed("InitialCorruptCheck=true, CompactHashCheck=F,").unwrap(),
            vec![
                ("InitialCorruptCheck".to_string(), true),
                ("CompactHashCheck".to_string(), false)
            ]
        );
        assert_eq!(
            parsed("Nope=true").unwrap_err(),
            "unrecognized feature gate: Nope"
        );
        assert_eq!(
            parsed("InitialCorruptCheck").unwrap_err(),
            "missing bool value for InitialCorruptCheck"
        );
        assert_eq!(
            parsed("InitialCorruptCheck=yes").unwrap_err(),
            "invalid value of InitialCorruptCheck=yes, err: strconv.ParseBool: parsing \"yes\": invalid syntax"
        );
    }

    #[test]
    fn all_alpha_yields_to_explicit_gates() {
        let pairs = vec![
            ("InitialCorruptCheck".to_string(), false),
            ("AllAlpha".to_string(), true),
        ];
        let eff = effective(&pairs);
        let get = |n: &str| eff.iter().find(|(g, _, _)| g.name == n).map(|e| (e.1, e.2));
        assert_eq!(get("InitialCorruptCheck"), Some((false, true)));
        assert_eq!(get("CompactHashCheck"), Some((true, true)));
        assert_eq!(get("TxnModeWriteWithSharedBuffer"), Some((true, false)));
    }
}
