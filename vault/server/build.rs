//! `sqlx::migrate!` embeds `migrations/` when the crate compiles, but cargo
//! only rebuilds a crate when its sources change: without this, a migration
//! added alone would be missing from the binary until some `.rs` file of
//! the crate was touched.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
