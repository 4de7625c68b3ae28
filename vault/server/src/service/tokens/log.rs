//! Tokenizing usage logs inside the vault (the `TokenizeLog` stream), in
//! stateless mode (the domain key is derived here and never leaves) or in
//! cross-reference mode (identifiers become their customer's entity token).

use std::collections::HashMap;
use std::sync::Arc;

use idvault_policies::{Action, Resource};
use idvault_tokenizer::rewrite::FieldSpec;
use idvault_tokenizer::rewrite::{Format, Reject, Rewriter, Splitter, TokenSource};
use idvault_tokenizer::{DomainKey, IdentifierType, NormalizeOptions};
use zeroize::Zeroize;

use crate::service::streams::{StreamKind, StreamSlot};
use crate::service::{Caller, Vault, VaultError};
use idvault_core::crypto::HASH_LEN;
use idvault_core::xref::{XrefIndexKey, blind_index};
use idvault_tokenizer::pipeline::MAX_RECORD_BYTES;

/// Rejected records one message may produce: the rest of a message past
/// this is not read and the stream ends (RESOURCE_EXHAUSTED). A 1 MiB
/// message of one-byte lines would otherwise make about 500,000 rejects,
/// held until a slow reader takes them.
pub const MAX_REJECTS_PER_MESSAGE: usize = 10_000;
/// Identifiers looked up per database round of a cross-reference chunk.
const RESOLVE_CHUNK: usize = 2_000;
/// Rejected records one stream may produce in all.
pub const MAX_REJECTS_PER_STREAM: usize = 100_000;

/// How tokens are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// `tk_<domain>_v<n>_…` from the domain key.
    Stateless {
        /// Token domain.
        domain: String,
    },
    /// The customer's entity token from the cross-reference table.
    CrossReference,
}

/// Settings of one tokenize stream.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Record format.
    pub format: Format,
    /// Fields to replace.
    pub fields: Vec<FieldSpec>,
    /// Token mode.
    pub mode: Mode,
    /// Phone normalisation.
    pub opts: NormalizeOptions,
    /// CSV header row (CSV only).
    pub csv_header: Vec<u8>,
}

/// Records every identifier asked for, answering with a placeholder.
#[derive(Default)]
struct Collect(std::sync::Mutex<Vec<(IdentifierType, String)>>);

impl TokenSource for Collect {
    fn token_into(
        &self,
        ty: IdentifierType,
        normalized: &str,
        out: &mut String,
    ) -> Result<(), String> {
        if let Ok(mut v) = self.0.lock() {
            v.push((ty, normalized.to_owned()));
        }
        out.push('x');
        Ok(())
    }
}

/// Answers from a resolved map; unknown identifiers are refused.
struct Resolved(HashMap<(IdentifierType, String), String>);

impl TokenSource for Resolved {
    fn token_into(
        &self,
        ty: IdentifierType,
        normalized: &str,
        out: &mut String,
    ) -> Result<(), String> {
        match self.0.get(&(ty, normalized.to_owned())) {
            Some(t) => {
                out.push_str(t);
                Ok(())
            }
            None => Err("identifier is not linked to any entity".into()),
        }
    }
}

enum Source {
    Stateless(Arc<DomainKey>),
    /// The partner (its cross-reference namespace) and its blind-index
    /// keys, newest version first.
    CrossReference(String, Arc<Vec<XrefIndexKey>>),
}

/// One tokenize stream's state.
pub struct LogTokenizer {
    vault: Arc<Vault>,
    settings: Arc<Settings>,
    source: Source,
    pending: Vec<u8>,
    splitter: Splitter,
    next_line: u64,
    /// Records rejected so far.
    rejected: usize,
    /// Its place among the partner's open TokenizeLog streams.
    _slot: StreamSlot,
}

impl std::fmt::Debug for LogTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogTokenizer")
            .field("mode", &self.settings.mode)
            .field("next_line", &self.next_line)
            .finish()
    }
}

fn rewriter<'t>(s: &Settings, tokens: &'t dyn TokenSource) -> Result<Rewriter<'t>, String> {
    match s.format {
        Format::JsonLines => Rewriter::json_lines(s.fields.clone(), s.opts, tokens),
        Format::Csv { delimiter } => {
            Rewriter::csv(s.fields.clone(), &s.csv_header, delimiter, s.opts, tokens)
        }
    }
    .map_err(|e| e.to_string())
}

/// Output of one fed chunk.
#[derive(Debug, Default)]
pub struct Fed {
    /// Rewritten records.
    pub data: Vec<u8>,
    /// Records refused.
    pub rejects: Vec<Reject>,
    /// Records rewritten.
    pub rewritten: u64,
}

impl Vault {
    /// Opens a tokenize stream: authorises, audits (fail closed), derives keys.
    pub async fn start_tokenize(
        self: &Arc<Self>,
        caller: &Caller,
        settings: Settings,
    ) -> Result<LogTokenizer, VaultError> {
        let (source, settings, slot) = self
            .handle(caller, Action::TokenizeLog, async |req| {
                rewriter(&settings, &Collect::default()).map_err(VaultError::BadRequest)?;
                let (source, detail) = self.token_source(req, &settings.mode)?;
                let slot = self.take_stream_slot(StreamKind::TokenizeLog, &req.partner.name)?;
                let tx = self.begin().await?;
                self.commit(tx, req, None, detail).await?;
                Ok((source, settings, slot))
            })
            .await?;
        let format = settings.format;
        let first_line = if matches!(settings.format, Format::Csv { .. }) {
            2
        } else {
            1
        };
        Ok(LogTokenizer {
            vault: Arc::clone(self),
            settings: Arc::new(settings),
            source,
            pending: Vec::new(),
            splitter: Splitter::new(format),
            next_line: first_line,
            rejected: 0,
            _slot: slot,
        })
    }
}

impl Vault {
    /// The token source of a tokenize stream, after the checks on its
    /// mode, and the audit detail that names it.
    fn token_source(
        &self,
        req: &mut crate::service::pipeline::Request<'_>,
        mode: &Mode,
    ) -> Result<(Source, String), VaultError> {
        let partner = req.partner;
        match mode {
            Mode::Stateless { domain } => {
                if !idvault_tokenizer::token::valid_domain(domain) {
                    return Err(VaultError::BadRequest(
                        "invalid token domain (use 1-32 of a-z, 0-9, -)".into(),
                    ));
                }
                if !partner.token_domains.iter().any(|d| d == domain) {
                    // A domain key answers for whoever may use it: a partner
                    // able to tokenize in another's domain could build a
                    // dictionary of that partner's tokens. (The registry's
                    // list is the floor; policies can only narrow it.)
                    return Err(VaultError::DomainDenied);
                }
                req.decide_on(Resource::TokenDomain(domain), &[])?;
                // Each domain issues under its own version (docs/keys.md,
                // "Token domains"): rotating one leaves the others' tokens.
                let v = self.keys().token_version(domain);
                let k = self.keys().token_key(domain, v)?;
                let mut bytes = *k.expose();
                let dk = DomainKey::new(domain, v, &bytes)
                    .map_err(|e| VaultError::BadRequest(e.to_string()));
                bytes.zeroize();
                Ok((
                    Source::Stateless(Arc::new(dk?)),
                    format!("mode=stateless domain={domain} v{v}"),
                ))
            }
            Mode::CrossReference => {
                let keys = self
                    .keys()
                    .versions()
                    .into_iter()
                    .rev()
                    .map(|x| self.keys().xref_index_key(&partner.name, x))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok((
                    Source::CrossReference(partner.name.clone(), Arc::new(keys)),
                    "mode=cross_reference".to_owned(),
                ))
            }
        }
    }
}

impl LogTokenizer {
    /// Feeds bytes (any split); rewrites every whole record received so
    /// far, or everything when `last`.
    pub async fn feed(&mut self, data: &[u8], last: bool) -> Result<Fed, VaultError> {
        self.pending.extend_from_slice(data);
        // Each byte is scanned once however the client splits its data.
        let end = self.splitter.scan(&self.pending);
        // Every record of the cut, not only the unfinished one: a message
        // may bring many records, and one longer than the bound would
        // otherwise be rewritten whole (its output several times larger).
        if self.splitter.longest_record() > MAX_RECORD_BYTES
            || self.pending.len() - end.unwrap_or(0) > MAX_RECORD_BYTES
        {
            return Err(VaultError::BadRequest(format!(
                "record longer than {MAX_RECORD_BYTES} bytes"
            )));
        }
        let cut = match end {
            _ if last => self.pending.len(),
            Some(c) => c,
            None => return Ok(Fed::default()),
        };
        let rest = self.pending.split_off(cut);
        let chunk = std::mem::replace(&mut self.pending, rest);
        self.splitter.consume(cut);
        let first = self.next_line;
        // Numbered by newlines, as the rewriters number lines (a chunk may
        // end at a lone `\r`, still on its line).
        self.next_line += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        let settings = Arc::clone(&self.settings);
        let fed = match &self.source {
            Source::Stateless(key) => {
                let key = Arc::clone(key);
                tokio::task::spawn_blocking(move || rewrite(&settings, key.as_ref(), &chunk, first))
                    .await
                    .map_err(|_| VaultError::Internal("tokenizer task failed"))?
            }
            Source::CrossReference(owner, keys) => {
                let (owner, keys) = (owner.clone(), Arc::clone(keys));
                let vault = Arc::clone(&self.vault);
                // One cheap read per chunk keeps every replica's cache honest.
                let generation = vault.store().xref_generation(&owner).await?;
                vault.xref_cache().sync(&owner, generation);
                // Pass 1: which identifiers does this chunk need, and which
                // of them does the cache answer? Their keyed hashes (one
                // HMAC each, up to a message's worth) and cache reads run
                // on the blocking pool, not on the runtime's workers that
                // every other partner's calls share.
                let (chunk, settings, known) = tokio::task::spawn_blocking({
                    let (vault, owner, keys) =
                        (Arc::clone(&vault), owner.clone(), Arc::clone(&keys));
                    move || {
                        let c = Collect::default();
                        let _ = rewrite(&settings, &c, &chunk, first);
                        let mut wanted = c.0.into_inner().unwrap_or_default();
                        wanted.sort();
                        wanted.dedup();
                        let known = vault.classify_identifiers(&owner, &keys, wanted);
                        (chunk, settings, known)
                    }
                })
                .await
                .map_err(|_| VaultError::Internal("tokenizer task failed"))?;
                let map = vault
                    .resolve_entities(&owner, &keys, generation, known, MAX_REJECTS_PER_MESSAGE)
                    .await?;
                // Pass 2: rewrite with the resolved tokens.
                tokio::task::spawn_blocking(move || {
                    rewrite(&settings, &Resolved(map), &chunk, first)
                })
                .await
                .map_err(|_| VaultError::Internal("tokenizer task failed"))?
            }
        }?;
        self.rejected += fed.rejects.len();
        if self.rejected > MAX_REJECTS_PER_STREAM {
            return Err(VaultError::TooManyRejects(
                MAX_REJECTS_PER_STREAM,
                "in one stream",
            ));
        }
        Ok(fed)
    }
}

fn rewrite(
    settings: &Settings,
    tokens: &dyn TokenSource,
    chunk: &[u8],
    first: u64,
) -> Result<Fed, VaultError> {
    let rw = rewriter(settings, tokens)
        .map_err(VaultError::BadRequest)?
        .with_reject_limit(MAX_REJECTS_PER_MESSAGE as u64);
    let mut fed = Fed {
        data: Vec::with_capacity(chunk.len() + chunk.len() / 2),
        ..Fed::default()
    };
    let stats = rw.rewrite_chunk(chunk, first, &mut fed.data, &mut fed.rejects);
    if stats.stopped {
        return Err(VaultError::TooManyRejects(
            MAX_REJECTS_PER_MESSAGE,
            "in one message",
        ));
    }
    fed.rewritten = stats.rewritten;
    Ok(fed)
}

/// A chunk's identifiers sorted by what the cache knows of them.
#[derive(Default)]
struct Known {
    /// Linked, with their entity token.
    found: HashMap<(IdentifierType, String), String>,
    /// Known to be linked to nothing.
    unlinked: usize,
    /// Not in the cache, with their current-version blind index.
    misses: Vec<(IdentifierType, String, [u8; HASH_LEN])>,
}

impl Vault {
    /// Hashes each identifier under the current key version and reads the
    /// cache (already synced to the partner's generation). CPU-bound: called
    /// on the blocking pool.
    fn classify_identifiers(
        &self,
        owner: &str,
        keys: &[XrefIndexKey],
        wanted: Vec<(IdentifierType, String)>,
    ) -> Known {
        let mut known = Known {
            found: HashMap::with_capacity(wanted.len()),
            ..Known::default()
        };
        let Some(current) = keys.first() else {
            return known;
        };
        for (ty, n) in wanted {
            let bi = blind_index(current, ty, &n);
            match self.xref_cache().get(owner, &bi) {
                Some(Some(t)) => {
                    known.found.insert((ty, n), t);
                }
                // Known to be linked to nothing: no database round trip.
                Some(None) => known.unlinked += 1,
                None => known.misses.push((ty, n, bi)),
            }
        }
        known
    }

    /// Resolves the identifiers the cache did not know to canonical entity
    /// tokens, looking up every live key version's blind index. More than
    /// `max_unlinked` identifiers linked to nothing end the message (each
    /// would be a refused record): the lookups stop there, so junk cannot
    /// buy unbounded database work.
    async fn resolve_entities(
        &self,
        owner: &str,
        keys: &Arc<Vec<XrefIndexKey>>,
        generation: i64,
        known: Known,
        max_unlinked: usize,
    ) -> Result<HashMap<(IdentifierType, String), String>, VaultError> {
        let Known {
            found: mut out,
            mut unlinked,
            misses,
        } = known;
        let too_many = || VaultError::TooManyRejects(max_unlinked, "in one message");
        if unlinked > max_unlinked {
            return Err(too_many());
        }
        // Every live version's blind index of every miss, looked up a
        // chunk at a time so a message of junk stops early.
        let mut misses = misses.into_iter().peekable();
        while misses.peek().is_some() {
            let chunk: Vec<_> = misses.by_ref().take(RESOLVE_CHUNK).collect();
            // Older versions' indexes (only while a rotation is under way)
            // are hashed on the blocking pool too.
            let (chunk, per_miss) = if keys.len() > 1 {
                let keys = Arc::clone(keys);
                tokio::task::spawn_blocking(move || {
                    let per_miss = older_indexes(&keys, &chunk);
                    (chunk, per_miss)
                })
                .await
                .map_err(|_| VaultError::Internal("tokenizer task failed"))?
            } else {
                let per_miss = chunk.iter().map(|(_, _, bi)| vec![*bi]).collect();
                (chunk, per_miss)
            };
            let all: Vec<[u8; HASH_LEN]> = per_miss.iter().flatten().copied().collect();
            let found = self.store().xref_lookup(owner, &all).await?;
            for ((ty, n, bi), indexes) in chunk.into_iter().zip(per_miss) {
                // Newest version first, as at import.
                let token = indexes.iter().find_map(|i| found.get(i)).cloned();
                self.xref_cache()
                    .insert(generation, owner, bi, token.clone());
                match token {
                    Some(token) => {
                        out.insert((ty, n), token);
                    }
                    None => unlinked += 1,
                }
            }
            if unlinked > max_unlinked {
                return Err(too_many());
            }
        }
        Ok(out)
    }
}

/// Each miss's blind indexes, newest key version first.
fn older_indexes(
    keys: &[XrefIndexKey],
    chunk: &[(IdentifierType, String, [u8; HASH_LEN])],
) -> Vec<Vec<[u8; HASH_LEN]>> {
    chunk
        .iter()
        .map(|(ty, n, bi)| {
            std::iter::once(*bi)
                .chain(keys.iter().skip(1).map(|k| blind_index(k, *ty, n)))
                .collect()
        })
        .collect()
}
