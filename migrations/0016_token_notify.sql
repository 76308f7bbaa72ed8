-- Every API process keeps the tokens' digests and scopes in memory, so that checking a token
-- costs no query; any change to a token (made, revoked, renamed, rescoped) tells every
-- process to load them again. A use being recorded (`last_used_at`) changes nothing they keep.
CREATE FUNCTION meshploy_tokens_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('meshploy_tokens', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER api_tokens_changed
    AFTER INSERT OR DELETE OR UPDATE OF name, scope, sha256 OR TRUNCATE ON api_tokens
    FOR EACH STATEMENT EXECUTE FUNCTION meshploy_tokens_changed();
