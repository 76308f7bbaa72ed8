//! Pull requests: a forge client (GitHub, Gitea/Forgejo) behind one small trait, the plan
//! comment and commit status as values (`comment`, pure), and the review that plans a pull
//! request's head read-only and publishes it (`review`); preview environments as values
//! (`preview`, pure) and in the database (`previews`); the rows webhooks leave (`store`) and
//! the leader's reviewer of them (`worker`).

pub mod client;
pub mod comment;
pub mod preview;
pub mod previews;
pub mod review;
pub mod store;
pub mod worker;

pub use client::{Client, Forge, ForgeError, Kind, PullRef, PullRequest};
pub use comment::Review;
pub use preview::{Secrets, Trust};
