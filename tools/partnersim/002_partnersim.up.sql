-- partnersim (a STAND-IN for the external partners): the state tests inspect. Every mutating
-- call is idempotent by the caller's key; releasing or cancelling by a key never used leaves a
-- tombstone, so a call that arrives late with that key finds the released/cancelled record
-- instead of creating a hold or an intent nobody will clean up.

-- status: 1 held, 2 released, 3 expired (hospitality.partner.v1.ReservationStatus)
CREATE TABLE ps_reservations (
    reservation_id    uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    reservation_key   text        NOT NULL UNIQUE,
    venue_id          text        NOT NULL,
    inventory_item_id text        NOT NULL,
    window_start      timestamptz,
    window_end        timestamptz,
    party_size        integer     NOT NULL DEFAULT 0,
    status            smallint    NOT NULL,
    hold_until        timestamptz,
    booking_id        text        NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    released_at       timestamptz,
    release_reason    text        NOT NULL DEFAULT ''
);
CREATE INDEX ps_reservations_item ON ps_reservations (venue_id, inventory_item_id)
    WHERE status = 1;

CREATE TABLE ps_quotes (
    quote_id   uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    venue_id   text        NOT NULL,
    total      bigint      NOT NULL,
    currency   text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- status: hospitality.partner.v1.PaymentIntentStatus (1 requires payment ... 6 cancelled)
CREATE TABLE ps_intents (
    payment_intent_id uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    idempotency_key   text        NOT NULL UNIQUE,
    amount            bigint      NOT NULL,
    currency          text        NOT NULL,
    refunded          bigint      NOT NULL DEFAULT 0,
    status            smallint    NOT NULL,
    client_secret     text        NOT NULL DEFAULT '',
    booking_id        text        NOT NULL DEFAULT '',
    guest_id          text        NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- status: hospitality.partner.v1.RefundStatus
CREATE TABLE ps_refunds (
    refund_id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    idempotency_key   text        NOT NULL UNIQUE,
    payment_intent_id uuid        NOT NULL REFERENCES ps_intents,
    amount            bigint      NOT NULL,
    currency          text        NOT NULL,
    status            smallint    NOT NULL,
    reason            text        NOT NULL DEFAULT '',
    created_at        timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- A refund, idempotent by key: the intent must be paid (status 4) and the amount (default:
-- what is left) within what is left. HM001 = failed precondition.
CREATE FUNCTION ps_refund(p_key text, p_intent text, p_amount bigint, p_reason text,
                          OUT refund_id text, OUT amount bigint, OUT currency text,
                          OUT status smallint, OUT created bigint)
LANGUAGE plpgsql AS $$
DECLARE
    i ps_intents%ROWTYPE;
    r ps_refunds%ROWTYPE;
BEGIN
    SELECT * INTO r FROM ps_refunds WHERE idempotency_key = p_key;
    IF NOT FOUND THEN
        SELECT * INTO i FROM ps_intents WHERE payment_intent_id::text = p_intent FOR UPDATE;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no payment intent %', p_intent USING ERRCODE = 'HM001';
        END IF;
        IF i.status <> 4 THEN
            RAISE EXCEPTION 'payment intent % is not paid', p_intent USING ERRCODE = 'HM001';
        END IF;
        p_amount := coalesce(p_amount, i.amount - i.refunded);
        IF p_amount <= 0 OR p_amount > i.amount - i.refunded THEN
            RAISE EXCEPTION 'refund exceeds what is left to refund' USING ERRCODE = 'HM001';
        END IF;
        INSERT INTO ps_refunds (idempotency_key, payment_intent_id, amount, currency, status,
                                reason)
        VALUES (p_key, i.payment_intent_id, p_amount, i.currency, 2, p_reason)
        RETURNING * INTO r;
        UPDATE ps_intents SET refunded = refunded + p_amount, updated_at = clock_timestamp()
        WHERE payment_intent_id = i.payment_intent_id;
    END IF;
    refund_id := r.refund_id::text;
    amount := r.amount;
    currency := r.currency;
    status := r.status;
    created := (extract(epoch FROM r.created_at) * 1000000)::bigint;
END $$;
