//! Generated protocol types (from `proto/`, by `proto/regen`). Do not edit by hand.
//! `descriptor.bin`, the descriptor set of the same files, is made there too.
#![allow(clippy::all, missing_docs, non_snake_case, non_camel_case_types)]

pub mod mvccpb {
    include!("mvccpb.rs");
}
pub mod authpb {
    include!("authpb.rs");
}
pub mod etcdserverpb {
    include!("etcdserverpb.rs");
}
pub mod v3lockpb {
    include!("v3lockpb.rs");
}
pub mod v3electionpb {
    include!("v3electionpb.rs");
}
