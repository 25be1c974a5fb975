//! openraft's own storage test suite, run against the sled-backed log store and state machine:
//! every test of it gets a fresh in-memory database.

use chorus_cluster::{LogStore, RaftStorageError, StateMachineStore, TypeConfig};
use chorus_storage::Store;
use openraft::testing::{StoreBuilder, Suite};
use openraft::StorageIOError;

struct FreshStore;

impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, Store> for FreshStore {
    async fn build(&self) -> Result<(Store, LogStore, StateMachineStore), RaftStorageError> {
        let store = Store::temporary().map_err(|e| StorageIOError::write(&e))?;
        let log = LogStore::new(&store).map_err(|e| StorageIOError::write(&e))?;
        let state_machine = StateMachineStore::new(&store)?;
        Ok((store, log, state_machine))
    }
}

#[test]
fn openraft_storage_suite_passes_on_sled() {
    if let Err(e) = Suite::test_all(FreshStore) {
        panic!("storage error in openraft's suite: {e}");
    }
}
