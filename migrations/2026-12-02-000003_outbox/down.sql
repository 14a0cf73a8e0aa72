DROP TRIGGER wallets_version_changes_have_events ON wallets;
DROP TRIGGER wallets_versions_have_events ON wallets;
DROP FUNCTION wallets_check_events();
DROP FUNCTION wallet_versions_have_events(uuid, bigint, bigint);
DROP TABLE outbox_events;
DROP FUNCTION outbox_events_only_marked();
