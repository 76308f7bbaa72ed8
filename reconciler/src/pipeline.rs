//! The one path from desired state to written state, shared by `meshploy plan`, `meshploy
//! apply`, the reconciler's syncs, and (next) PR comments and the console.
//!
//! ```text
//! lock(pool, source) ─▶ Locked ──plan(desired)──▶ Planned ──check(guard)──▶ Checked ──apply──▶ revision
//!                             └──saved(file)───▶ (stale check)
//! ```
//!
//! Each step consumes the previous value and returns the only value the next step accepts,
//! so the checks live in the types: a [`Planned`] exists only after the ownership check (and,
//! for a saved plan, the staleness check) against the locked state, and a [`Checked`] only
//! after the guard. [`Checked::apply`] is the only way to write the state, inside the
//! transaction that took the lock; dropping any of them rolls back. [`preview`] is the same
//! plan without the lock, for `meshploy plan` and PR comments.

use sqlx::{PgPool, Postgres, Transaction};

use crate::Error;
use std::collections::{BTreeMap, BTreeSet};

use schema::{Address, ManifestFile};

use crate::apply::{self, Desired, SavedFile, SavedPlan};
use crate::error::db;
use crate::plan::{self, Change, Guard, Plan, Refusal};
use crate::secrets::Keyring;
use crate::store::{self, Live, RevisionMeta, locks};

/// Begins a transaction holding the apply lock, waiting up to `timeout_ms` for it.
pub async fn begin_locked(
    pool: &PgPool,
    timeout_ms: u64,
) -> Result<Transaction<'static, Postgres>, Error> {
    let mut tx = pool.begin().await.map_err(db("beginning the apply"))?;
    if locks::try_apply_lock(&mut tx, timeout_ms).await? {
        return Ok(tx);
    }
    tx.rollback()
        .await
        .map_err(db("giving up on the apply lock"))?;
    let holder = locks::apply_lock_holder(pool)
        .await?
        .unwrap_or_else(|| "a session that has since finished".into());
    Err(Error::Locked {
        holder,
        waited_ms: timeout_ms,
    })
}

/// Who plans: the source that will own what is applied, and the source whose resources it
/// takes over, if any (`--adopt-from`).
#[derive(Clone, Copy, Debug)]
pub struct Owner<'a> {
    pub source: &'a str,
    pub adopt_from: Option<&'a str>,
}

impl<'a> Owner<'a> {
    /// A source planning only for itself.
    pub fn source(source: &'a str) -> Owner<'a> {
        Owner {
            source,
            adopt_from: None,
        }
    }

    async fn load(&self, conn: &mut sqlx::PgConnection) -> Result<Live, Error> {
        let live = store::load_state(conn, self.source, self.adopt_from).await?;
        match self.adopt_from {
            Some(from) if live.adopted.is_empty() => Err(Error::NothingToAdopt {
                from: from.to_owned(),
            }),
            _ => Ok(live),
        }
    }
}

/// A transaction holding the apply lock, with the live state as one source sees it.
#[derive(Debug)]
pub struct Locked {
    tx: Transaction<'static, Postgres>,
    source: String,
    adopt_from: Option<String>,
    live: Live,
}

/// Takes the apply lock (waiting up to `timeout_ms`) and reads the state as `owner` sees it.
pub async fn lock(pool: &PgPool, owner: Owner<'_>, timeout_ms: u64) -> Result<Locked, Error> {
    let mut tx = begin_locked(pool, timeout_ms).await?;
    let live = owner.load(&mut tx).await?;
    Ok(Locked {
        tx,
        source: owner.source.to_owned(),
        adopt_from: owner.adopt_from.map(str::to_owned),
        live,
    })
}

impl Locked {
    /// The plan from the locked state to `desired`, refused if `desired` declares what
    /// another source owns.
    pub fn plan(self, desired: Desired) -> Result<Planned, Error> {
        let plan = plan_for(
            &self.live,
            &self.source,
            self.adopt_from.as_deref(),
            &desired,
        )?;
        Ok(Planned {
            locked: self,
            plan,
            desired,
        })
    }

    /// A saved plan, with `desired` prepared from its own manifests (validated again). It is
    /// refused if any resource it touches changed since it was made, if it writes what
    /// another source owns, or if the plan recomputed from its manifests for the resources
    /// it touches differs from the saved one (the file was edited).
    pub fn saved(self, saved: SavedPlan, desired: Desired) -> Result<Planned, Error> {
        let stale = plan::stale(&saved.plan, &self.live.state);
        if !stale.is_empty() {
            return Err(Error::Stale(stale));
        }
        check_ownership(&self.live, &self.source, &desired)?;
        // Only the touched resources are compared: others may have changed since, which a
        // saved plan allows (per-resource staleness).
        let touched: BTreeSet<&Address> = saved.plan.changes.iter().map(|c| &c.address).collect();
        let only = |state: &plan::State| -> plan::State {
            state
                .iter()
                .filter(|(address, _)| touched.contains(address))
                .map(|(address, entry)| (address.clone(), entry.clone()))
                .collect()
        };
        let mut recomputed = plan::diff(&only(&desired.entries), &only(&self.live.state));
        recomputed.adoption = adoption(&self.live, self.adopt_from.as_deref());
        if recomputed != saved.plan {
            let differing = differing(&recomputed, &saved.plan);
            return Err(Error::Tampered(differing));
        }
        Ok(Planned {
            locked: self,
            plan: saved.plan,
            desired,
        })
    }
}

/// A plan made under the apply lock, ownership checked; the guard comes next.
#[derive(Debug)]
pub struct Planned {
    locked: Locked,
    plan: Plan,
    desired: Desired,
}

impl Planned {
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// Passes the plan through `guard`: protected resources, whole projects, the share of
    /// resources destroyed.
    pub fn check(self, guard: &Guard) -> Result<Checked, Error> {
        let refusals = guard.check(&self.plan, &self.locked.live.state);
        if refusals.is_empty() {
            Ok(Checked(self))
        } else {
            Err(Error::Refused(refusals))
        }
    }
}

/// A plan that passed every check against the locked state: the only thing that applies.
#[derive(Debug)]
pub struct Checked(Planned);

impl Checked {
    pub fn plan(&self) -> &Plan {
        &self.0.plan
    }

    /// Writes the plan, records the revision, notifies listeners and commits; returns the
    /// revision. Secrets that changed are opened with `keys` and sealed for their rows.
    pub async fn apply(self, keys: Option<&Keyring>, meta: &RevisionMeta) -> Result<i64, Error> {
        let Planned {
            locked,
            plan,
            desired,
        } = self.0;
        let Locked {
            mut tx,
            live,
            source,
            ..
        } = locked;
        if let Some(adoption) = &plan.adoption {
            store::writes::transfer(&mut tx, &adoption.from, &source).await?;
        }
        let revision = apply::write(&mut tx, &plan, &desired, &live.state, keys, meta).await?;
        tx.commit().await.map_err(db("committing the apply"))?;
        Ok(revision)
    }
}

/// A plan made without the lock: what `meshploy plan` shows and saves.
#[derive(Debug)]
pub struct Preview {
    pub plan: Plan,
    /// Why the guard would refuse the plan at apply, if it would.
    pub refusals: Vec<Refusal>,
}

/// Plans `desired` for `source` against one consistent snapshot, without the lock: the plan
/// is a preview, and applying it as a saved plan checks it for staleness.
pub async fn preview(
    pool: &PgPool,
    owner: Owner<'_>,
    desired: Desired,
    guard: &Guard,
) -> Result<Preview, Error> {
    let live = {
        let mut tx = pool.begin().await.map_err(db("beginning the plan"))?;
        owner.load(&mut tx).await?
    };
    let plan = plan_for(&live, owner.source, owner.adopt_from, &desired)?;
    let refusals = guard.check(&plan, &live.state);
    Ok(Preview { plan, refusals })
}

impl Preview {
    /// The plan as a file for `meshploy apply FILE`, with the manifests it was made from.
    pub fn save(self, source: String, commit: Option<String>, files: &[ManifestFile]) -> SavedPlan {
        SavedPlan {
            format: SavedPlan::FORMAT.into(),
            adopt_from: self.plan.adoption.as_ref().map(|a| a.from.clone()),
            source,
            commit,
            plan: self.plan,
            files: files
                .iter()
                .map(|f| SavedFile {
                    path: f.path.clone(),
                    text: String::from_utf8_lossy(&f.bytes).into_owned(),
                })
                .collect(),
        }
    }
}

/// The addresses whose change differs between two plans (or is in only one of them).
fn differing(a: &Plan, b: &Plan) -> Vec<String> {
    let index = |plan: &Plan| -> BTreeMap<String, Change> {
        plan.changes
            .iter()
            .map(|c| (c.address.to_string(), c.clone()))
            .collect()
    };
    let (a, b) = (index(a), index(b));
    let mut addresses: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    addresses.retain(|address| a.get(*address) != b.get(*address));
    addresses.into_iter().cloned().collect()
}

fn plan_for(
    live: &Live,
    source: &str,
    adopt_from: Option<&str>,
    desired: &Desired,
) -> Result<Plan, Error> {
    check_ownership(live, source, desired)?;
    let mut plan = plan::diff(&desired.entries, &live.state);
    plan.adoption = adoption(live, adopt_from);
    Ok(plan)
}

/// The takeover a plan shows, when it adopts another source's resources.
fn adoption(live: &Live, adopt_from: Option<&str>) -> Option<plan::Adoption> {
    let from = adopt_from?;
    Some(plan::Adoption {
        from: from.to_owned(),
        resources: live.adopted.clone(),
    })
}

/// Refuses `desired` if it declares what a source other than `source` owns.
fn check_ownership(live: &Live, source: &str, desired: &Desired) -> Result<(), Error> {
    let conflicts = plan::conflicts(&desired.entries, &live.foreign);
    if conflicts.is_empty() {
        Ok(())
    } else {
        Err(Error::Conflict {
            source_name: source.to_owned(),
            conflicts,
        })
    }
}
