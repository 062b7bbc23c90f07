//! The keys a worker verifies tokens with, kept beside the immutable configuration:
//! each issuer's verifier (its key set and this worker's cache of tokens it verified).
//! Inline keys come compiled in the config and get their verifier on first use; fetched
//! keys are installed by `keys` when they arrive. One ring per worker (one VM each).

use std::collections::HashMap;
use std::rc::Rc;

use crate::config::{Issuer, IssuerError};
use crate::jwt::{IssuerVerifier, KeySet, VerifiedToken};

/// Verifiers by issuer name.
#[derive(Debug, Default)]
pub struct KeyRing {
    verifiers: HashMap<String, Entry>,
}

#[derive(Debug)]
struct Entry {
    verifier: IssuerVerifier,
    /// The config's inline keys it was built from (`None`: fetched keys).
    inline: Option<Rc<KeySet>>,
}

impl KeyRing {
    /// Verifies `token` with `issuer`'s current keys, sharing the cached result.
    pub fn verify(
        &mut self,
        issuer: &Issuer,
        token: &str,
        now_unix: u64,
    ) -> Result<Rc<VerifiedToken>, IssuerError> {
        let verifier = self.verifier(issuer).ok_or(IssuerError::NoKeys)?;
        verifier
            .verify_shared(token, now_unix)
            .map_err(IssuerError::Token)
    }

    fn verifier(&mut self, issuer: &Issuer) -> Option<&IssuerVerifier> {
        if let Some(keys) = &issuer.inline_keys {
            let built = self
                .verifiers
                .get(&issuer.issuer)
                .and_then(|e| e.inline.as_ref())
                .is_some_and(|k| Rc::ptr_eq(k, keys));
            if !built {
                let entry = Entry {
                    verifier: issuer.verifier(Rc::clone(keys)),
                    inline: Some(Rc::clone(keys)),
                };
                self.verifiers.insert(issuer.issuer.clone(), entry);
            }
        }
        self.verifiers.get(&issuer.issuer).map(|e| &e.verifier)
    }

    /// Installs fetched keys for `issuer` (a fresh verifier: its cache starts empty).
    pub fn install(&mut self, issuer: &Issuer, keys: KeySet) {
        let entry = Entry {
            verifier: issuer.verifier(Rc::new(keys)),
            inline: None,
        };
        self.verifiers.insert(issuer.issuer.clone(), entry);
    }

    /// Forgets `issuer`'s fetched keys (they went stale): 503 until new ones arrive.
    pub fn remove(&mut self, issuer: &str) {
        self.verifiers.remove(issuer);
    }

    /// Are keys of `issuer` installed (fetched, or inline already in use)?
    pub fn has(&self, issuer: &str) -> bool {
        self.verifiers.contains_key(issuer)
    }
}
