-- Step 1: the whole directory (see schema.rs for the layout). Times are Unix seconds.

-- Addresses with their plan and daily limit override; aliases; devices (password hashes only).
CREATE TABLE addresses (address text PRIMARY KEY, plan text NOT NULL,
    daily_limit bigint CHECK (daily_limit BETWEEN 1 AND 4294967295), created_at bigint NOT NULL);
CREATE TABLE aliases (alias text PRIMARY KEY, created_at bigint NOT NULL,
    address text NOT NULL REFERENCES addresses(address) ON DELETE CASCADE);
CREATE INDEX aliases_by_address ON aliases(address);
CREATE TABLE devices (name text NOT NULL, credential_id text NOT NULL UNIQUE,
    address text NOT NULL REFERENCES addresses(address) ON DELETE CASCADE,
    password_hash bytea NOT NULL CHECK (length(password_hash) = 32), created_at bigint NOT NULL,
    PRIMARY KEY (address, name));

-- Addresses and aliases share one namespace: a second line behind the checks in each write.
-- Arguments: the other table, its key column, the new row's column to look up.
CREATE FUNCTION postern_name_not_taken() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    taken boolean;
BEGIN
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE %I = $1)', TG_ARGV[0], TG_ARGV[1])
        INTO taken USING to_jsonb(NEW) ->> TG_ARGV[2];
    IF taken THEN
        RAISE EXCEPTION '% collides with the % table', TG_ARGV[2], TG_ARGV[0];
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER alias_is_not_an_address BEFORE INSERT ON aliases FOR EACH ROW
    EXECUTE FUNCTION postern_name_not_taken('addresses', 'address', 'alias');
CREATE TRIGGER address_is_not_an_alias BEFORE INSERT ON addresses FOR EACH ROW
    EXECUTE FUNCTION postern_name_not_taken('aliases', 'alias', 'address');

-- Hosting accounts; their networks as text and as family, first and last address (bytea,
-- big-endian: a range query); their sender domains. A network belongs to one account at most.
CREATE TABLE hosting_accounts (name text PRIMARY KEY, created_at bigint NOT NULL,
    daily_limit bigint CHECK (daily_limit BETWEEN 1 AND 4294967295));
CREATE TABLE hosting_networks (network text NOT NULL,
    account text NOT NULL REFERENCES hosting_accounts(name) ON DELETE CASCADE,
    family smallint NOT NULL CHECK (family IN (4, 6)), first bytea NOT NULL, last bytea NOT NULL,
    prefix smallint NOT NULL, PRIMARY KEY (family, first, prefix));
CREATE INDEX hosting_networks_by_account ON hosting_networks(account);
CREATE TABLE hosting_domains (domain text NOT NULL, PRIMARY KEY (account, domain),
    account text NOT NULL REFERENCES hosting_accounts(name) ON DELETE CASCADE);

-- DKIM keys, the private key sealed (sealing.rs): ciphertext and tag, nonce, sealing key id.
-- At most one active key per domain and algorithm.
CREATE TABLE dkim_keys (domain text NOT NULL, selector text NOT NULL,
    algorithm text NOT NULL CHECK (algorithm IN ('rsa', 'ed25519')), bits integer NOT NULL,
    key_id text NOT NULL UNIQUE, sealed_key bytea NOT NULL, secret_key_id text NOT NULL,
    nonce bytea NOT NULL CHECK (length(nonce) = 12), public_key text NOT NULL,
    active boolean NOT NULL DEFAULT false, created_at bigint NOT NULL, activated_at bigint,
    PRIMARY KEY (domain, selector));
CREATE UNIQUE INDEX dkim_one_active_key ON dkim_keys(domain, algorithm) WHERE active;

-- The counter every write bumps first (Directory::generation; it also serialises writers).
CREATE TABLE directory_generation (value bigint NOT NULL,
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row));
INSERT INTO directory_generation (value) VALUES (0);
