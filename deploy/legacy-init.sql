-- Stands in for the legacy application's schema in deploy/compose.yaml; beside a real legacy
-- database these tables exist already and this file is not used.
CREATE TABLE public.customers (
    id int PRIMARY KEY,
    name text NOT NULL,
    email text
);

CREATE TABLE public.orders (
    id int PRIMARY KEY,
    customer_id int REFERENCES public.customers (id),
    total numeric(10, 2) NOT NULL,
    customer text,
    status text NOT NULL DEFAULT 'new',
    note text,
    updated_at timestamptz NOT NULL DEFAULT now()
);
