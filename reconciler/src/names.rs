//! The closed sets of names that cross the database, the API and the CLI: a source's state,
//! an attempt's outcome, what triggered it, and a source's policy; a deployment's state and
//! trigger, and a build's state.
//!
//! Each is an enum whose text form is written once, in [`closed_set!`]: `as_str`, `Display`,
//! `FromStr`, serde, and sqlx's text encoding all come from that one list, so a misspelt
//! state cannot compile and a stored value the code does not know is a decode error rather
//! than a silent default.

use std::fmt;

/// Defines an enum with one text name per variant and every mapping derived from it.
macro_rules! closed_set {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant,)+];

            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownName;

            fn from_str(text: &str) -> Result<$name, UnknownName> {
                match text {
                    $($text => Ok($name::$variant),)+
                    _ => Err(UnknownName {
                        set: stringify!($name),
                        text: text.to_owned(),
                        expected: &[$($text,)+],
                    }),
                }
            }
        }

        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({ "type": "string", "enum": [$($text,)+] })
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<$name, D::Error> {
                let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }

        impl sqlx::Type<sqlx::Postgres> for $name {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl sqlx::Encode<'_, sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<sqlx::Postgres>>::encode_by_ref(&self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $name {
            fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<$name, sqlx::error::BoxDynError> {
                let text = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
                Ok(text.parse()?)
            }
        }
    };
}

/// A name outside its closed set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown {set} `{text}`; expected one of: {}", expected.join(", "))]
pub struct UnknownName {
    pub set: &'static str,
    pub text: String,
    pub expected: &'static [&'static str],
}

closed_set! {
    /// Where a source stands (the `sources.state` column).
    SourceState {
        /// Registered, not synced yet.
        Pending = "pending",
        /// The branch's commit is applied.
        Synced = "synced",
        /// A manual source with a plan waiting to be applied.
        OutOfSync = "out-of-sync",
        /// A sync is under way.
        Applying = "applying",
        /// The last attempt failed; the state is what the last good one applied.
        Failed = "failed",
        /// The reconciler that was applying died; nothing of that attempt was applied.
        Interrupted = "interrupted",
    }
}

closed_set! {
    /// How a sync attempt ended (the `sync_attempts.outcome` column).
    AttemptOutcome {
        Synced = "synced",
        OutOfSync = "out-of-sync",
        Failed = "failed",
        /// Recorded by the next leader for an attempt whose reconciler died mid-way.
        Interrupted = "interrupted",
    }
}

impl AttemptOutcome {
    /// The state a source is left in by an attempt with this outcome.
    pub fn state(self) -> SourceState {
        match self {
            AttemptOutcome::Synced => SourceState::Synced,
            AttemptOutcome::OutOfSync => SourceState::OutOfSync,
            AttemptOutcome::Failed => SourceState::Failed,
            AttemptOutcome::Interrupted => SourceState::Interrupted,
        }
    }
}

closed_set! {
    /// What asked for a sync.
    Trigger {
        /// The reconciler started or took over.
        Start = "start",
        /// The poll interval passed.
        Poll = "poll",
        /// A ref of a local repository changed.
        Watch = "watch",
        /// A verified push webhook.
        Webhook = "webhook",
        /// `meshploy sync` or the sync API: always a full attempt.
        Request = "request",
    }
}

closed_set! {
    /// What happens to a new commit of a source; `auto` unless configured.
    #[derive(Default)]
    Policy {
        /// Apply each new commit.
        #[default]
        Auto = "auto",
        /// Plan only, and report the source out of sync until someone applies.
        Manual = "manual",
    }
}

closed_set! {
    /// Where a deployment stands (the `deployments.state` column).
    DeploymentState {
        /// Decided, not started.
        Queued = "queued",
        /// Its source is being built.
        Building = "building",
        /// Its replicas are starting and being checked.
        Deploying = "deploying",
        /// Its replicas passed their health checks and serve the service.
        Healthy = "healthy",
        /// It never served; `reason` says why.
        Failed = "failed",
        /// It served until a newer release replaced it.
        Superseded = "superseded",
        /// It served until a rollback replaced it.
        RolledBack = "rolled-back",
    }
}

impl DeploymentState {
    /// Whether a deployment in this state is still under way.
    pub fn active(self) -> bool {
        matches!(
            self,
            DeploymentState::Queued | DeploymentState::Building | DeploymentState::Deploying
        )
    }
}

closed_set! {
    /// What caused a deployment.
    DeployTrigger {
        /// An applied revision changed the service's release.
        Revision = "revision",
        /// `meshploy rollback`: an earlier healthy release, pinned.
        Rollback = "rollback",
        /// The release was healthy but nothing runs it (after a restart of the runtime).
        Restart = "restart",
    }
}

closed_set! {
    /// Where a build stands (the `builds.state` column).
    BuildState {
        Building = "building",
        Succeeded = "succeeded",
        Failed = "failed",
    }
}

closed_set! {
    /// What an API token may do; each scope includes the ones before it.
    TokenScope {
        /// Read everything the API shows.
        Read = "read",
        /// Also ask for syncs and roll services back.
        Operate = "operate",
        /// Everything.
        Admin = "admin",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_reads_back_as_itself_and_strangers_are_refused() {
        for state in SourceState::ALL {
            assert_eq!(state.as_str().parse::<SourceState>(), Ok(*state));
        }
        for outcome in AttemptOutcome::ALL {
            assert_eq!(outcome.to_string().parse::<AttemptOutcome>(), Ok(*outcome));
            assert_eq!(outcome.state().as_str(), outcome.as_str());
        }
        for trigger in Trigger::ALL {
            assert_eq!(trigger.as_str().parse::<Trigger>(), Ok(*trigger));
        }
        for state in DeploymentState::ALL {
            assert_eq!(state.as_str().parse::<DeploymentState>(), Ok(*state));
        }
        for trigger in DeployTrigger::ALL {
            assert_eq!(trigger.as_str().parse::<DeployTrigger>(), Ok(*trigger));
        }
        assert!(TokenScope::Read < TokenScope::Operate && TokenScope::Operate < TokenScope::Admin);
        for state in BuildState::ALL {
            assert_eq!(state.as_str().parse::<BuildState>(), Ok(*state));
        }
        let error = "Manual"
            .parse::<Policy>()
            .expect_err("names are case-sensitive");
        assert_eq!(
            error.to_string(),
            "unknown Policy `Manual`; expected one of: auto, manual"
        );
        assert!(serde_json::from_str::<Trigger>("\"cron\"").is_err());
        assert_eq!(
            serde_json::to_string(&SourceState::OutOfSync)
                .ok()
                .as_deref(),
            Some("\"out-of-sync\"")
        );
    }
}
