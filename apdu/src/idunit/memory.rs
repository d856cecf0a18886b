//! An identification unit store in RAM: for tests and in-process use.

use super::{IdStoreError, IdUnitRecord, IdUnitStore};

/// A store that keeps the record in memory (lost when dropped).
#[derive(Debug, Clone)]
pub struct MemoryIdStore {
    record: IdUnitRecord,
    /// When set, every commit fails (tests of a failing store).
    pub fail_commits: bool,
}

impl MemoryIdStore {
    /// A store holding `record`.
    pub fn new(record: IdUnitRecord) -> Self {
        Self {
            record,
            fail_commits: false,
        }
    }

    /// The committed record.
    pub fn record(&self) -> &IdUnitRecord {
        &self.record
    }
}

impl IdUnitStore for MemoryIdStore {
    fn load(&mut self) -> Result<IdUnitRecord, IdStoreError> {
        Ok(self.record.clone())
    }

    fn commit(&mut self, record: &IdUnitRecord) -> Result<(), IdStoreError> {
        if self.fail_commits {
            return Err(IdStoreError::Io);
        }
        self.record = record.clone();
        Ok(())
    }
}
