-- The ledger schema of relance's last release without migrations, on postgresql: what its
-- SQLModel.metadata.create_all made (sqlmodel 0.0.50, SQLAlchemy 2.1), frozen here so the
-- upgrade test keeps starting from it however the models change. Generated once with
-- CreateTable(table).compile(dialect=...) and CreateIndex(index).compile(...) per table.

CREATE TABLE app (
	app_key VARCHAR(64) NOT NULL,
	secret_hash VARCHAR(128) NOT NULL,
	name VARCHAR(128) NOT NULL,
	provider VARCHAR(32) NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	callback_urls JSON NOT NULL,
	callback_username VARCHAR(128),
	callback_secret VARCHAR(128),
	PRIMARY KEY (app_key)
);

CREATE TABLE callbackbatch (
	id SERIAL NOT NULL,
	app_key VARCHAR(64) NOT NULL,
	url VARCHAR(2048) NOT NULL,
	state VARCHAR(16) NOT NULL,
	rows INTEGER NOT NULL,
	attempts INTEGER NOT NULL,
	next_attempt_at TIMESTAMP WITH TIME ZONE NOT NULL,
	last_error VARCHAR(500),
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	delivered_at TIMESTAMP WITH TIME ZONE,
	PRIMARY KEY (id)
);

CREATE INDEX ix_callback_batch_due ON callbackbatch (app_key, state, next_attempt_at);

CREATE TABLE callbackrow (
	id SERIAL NOT NULL,
	app_key VARCHAR(64) NOT NULL,
	url VARCHAR(2048) NOT NULL,
	event_id VARCHAR(64) NOT NULL,
	msg_id VARCHAR(64) NOT NULL,
	row JSON NOT NULL,
	batch_id INTEGER,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (url, event_id)
);

CREATE INDEX ix_callback_row_unbatched ON callbackrow (app_key, batch_id, id);

CREATE INDEX ix_callbackrow_batch_id ON callbackrow (batch_id);

CREATE TABLE delivery (
	id SERIAL NOT NULL,
	msg_id VARCHAR(64) NOT NULL,
	stage INTEGER NOT NULL,
	registration_id VARCHAR(2048) NOT NULL,
	status VARCHAR(16) NOT NULL,
	title VARCHAR(200),
	alert VARCHAR(5000),
	sent_at TIMESTAMP WITH TIME ZONE,
	delivered_at TIMESTAMP WITH TIME ZONE,
	displayed_at TIMESTAMP WITH TIME ZONE,
	clicked_at TIMESTAMP WITH TIME ZONE,
	failed_at TIMESTAMP WITH TIME ZONE,
	error VARCHAR(500),
	PRIMARY KEY (id),
	UNIQUE (msg_id, stage, registration_id)
);

CREATE INDEX ix_delivery_page ON delivery (msg_id, stage, id);

CREATE TABLE device (
	id SERIAL NOT NULL,
	app_key VARCHAR(64) NOT NULL,
	registration_id VARCHAR(2048) NOT NULL,
	platform VARCHAR(16) NOT NULL,
	tags JSON NOT NULL,
	alias VARCHAR(128),
	attributes JSON NOT NULL,
	valid BOOLEAN NOT NULL,
	invalid_reason VARCHAR(500),
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (app_key, registration_id)
);

CREATE INDEX ix_device_alias ON device (alias);

CREATE INDEX ix_device_app_key ON device (app_key);

CREATE TABLE providerconfig (
	id SERIAL NOT NULL,
	app_key VARCHAR(64) NOT NULL,
	provider VARCHAR(32) NOT NULL,
	platforms JSON NOT NULL,
	credentials JSON NOT NULL,
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (app_key, provider)
);

CREATE INDEX ix_providerconfig_app_key ON providerconfig (app_key);

CREATE TABLE push (
	msg_id VARCHAR(64) NOT NULL,
	app_key VARCHAR(64) NOT NULL,
	request_id VARCHAR(128),
	request JSON NOT NULL,
	condition VARCHAR(32),
	stage_count INTEGER NOT NULL,
	state VARCHAR(32) NOT NULL,
	error VARCHAR(500),
	recipients INTEGER NOT NULL,
	created_at TIMESTAMP WITH TIME ZONE NOT NULL,
	seq INTEGER NOT NULL,
	n_delivered INTEGER NOT NULL,
	n_displayed INTEGER NOT NULL,
	n_clicked INTEGER NOT NULL,
	n_failed INTEGER NOT NULL,
	n_stopped INTEGER NOT NULL,
	PRIMARY KEY (msg_id),
	UNIQUE (app_key, request_id)
);

CREATE INDEX ix_push_app_key ON push (app_key);

CREATE TABLE recipient (
	id SERIAL NOT NULL,
	msg_id VARCHAR(64) NOT NULL,
	registration_id VARCHAR(2048) NOT NULL,
	platform VARCHAR(16) NOT NULL,
	delivered_at TIMESTAMP WITH TIME ZONE,
	displayed_at TIMESTAMP WITH TIME ZONE,
	clicked_at TIMESTAMP WITH TIME ZONE,
	failed_at TIMESTAMP WITH TIME ZONE,
	error VARCHAR(500),
	stopped BOOLEAN NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (msg_id, registration_id)
);

CREATE TABLE statusevent (
	id SERIAL NOT NULL,
	event_id VARCHAR(64) NOT NULL,
	msg_id VARCHAR(64) NOT NULL,
	registration_id VARCHAR(2048) NOT NULL,
	stage INTEGER NOT NULL,
	status VARCHAR(16) NOT NULL,
	at TIMESTAMP WITH TIME ZONE NOT NULL,
	error VARCHAR(500),
	received_at TIMESTAMP WITH TIME ZONE NOT NULL,
	PRIMARY KEY (id),
	UNIQUE (event_id)
);

CREATE INDEX ix_status_event_page ON statusevent (msg_id, id);
