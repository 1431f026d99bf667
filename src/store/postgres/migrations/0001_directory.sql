-- Step 1: the whole directory (see schema.rs for the layout).
CREATE TABLE addresses (
    address     text PRIMARY KEY,
    plan        text NOT NULL,
    daily_limit bigint CHECK (daily_limit BETWEEN 1 AND 4294967295),
    created_at  bigint NOT NULL
);

CREATE TABLE aliases (
    alias      text PRIMARY KEY,
    address    text NOT NULL REFERENCES addresses(address) ON DELETE CASCADE,
    created_at bigint NOT NULL
);
CREATE INDEX aliases_by_address ON aliases(address);

CREATE TABLE devices (
    address       text NOT NULL REFERENCES addresses(address) ON DELETE CASCADE,
    name          text NOT NULL,
    credential_id text NOT NULL UNIQUE,
    password_hash bytea NOT NULL CHECK (length(password_hash) = 32),
    created_at    bigint NOT NULL,
    PRIMARY KEY (address, name)
);

CREATE FUNCTION postern_alias_is_not_an_address() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM addresses WHERE address = NEW.alias) THEN
        RAISE EXCEPTION 'alias collides with an address';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER alias_is_not_an_address BEFORE INSERT ON aliases
    FOR EACH ROW EXECUTE FUNCTION postern_alias_is_not_an_address();

CREATE FUNCTION postern_address_is_not_an_alias() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM aliases WHERE alias = NEW.address) THEN
        RAISE EXCEPTION 'address collides with an alias';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER address_is_not_an_alias BEFORE INSERT ON addresses
    FOR EACH ROW EXECUTE FUNCTION postern_address_is_not_an_alias();

CREATE TABLE hosting_accounts (
    name        text PRIMARY KEY,
    daily_limit bigint CHECK (daily_limit BETWEEN 1 AND 4294967295),
    created_at  bigint NOT NULL
);

CREATE TABLE hosting_networks (
    account text NOT NULL REFERENCES hosting_accounts(name) ON DELETE CASCADE,
    network text NOT NULL,
    family  smallint NOT NULL CHECK (family IN (4, 6)),
    first   bytea NOT NULL,
    last    bytea NOT NULL,
    prefix  smallint NOT NULL,
    PRIMARY KEY (family, first, prefix)
);
CREATE INDEX hosting_networks_by_account ON hosting_networks(account);

CREATE TABLE hosting_domains (
    account text NOT NULL REFERENCES hosting_accounts(name) ON DELETE CASCADE,
    domain  text NOT NULL,
    PRIMARY KEY (account, domain)
);

CREATE TABLE dkim_keys (
    domain        text NOT NULL,
    selector      text NOT NULL,
    algorithm     text NOT NULL CHECK (algorithm IN ('rsa', 'ed25519')),
    bits          integer NOT NULL,
    key_id        text NOT NULL UNIQUE,
    sealed_key    bytea NOT NULL,
    nonce         bytea NOT NULL CHECK (length(nonce) = 12),
    secret_key_id text NOT NULL,
    public_key    text NOT NULL,
    active        boolean NOT NULL DEFAULT false,
    created_at    bigint NOT NULL,
    activated_at  bigint,
    PRIMARY KEY (domain, selector)
);
CREATE UNIQUE INDEX dkim_one_active_key ON dkim_keys(domain, algorithm) WHERE active;

CREATE TABLE directory_generation (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    value    bigint NOT NULL
);
INSERT INTO directory_generation (value) VALUES (0);
