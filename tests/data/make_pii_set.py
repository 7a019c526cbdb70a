"""Write tests/data/pii_labelled.jsonl: sentences with labelled PII (type + exact value) and near-misses that must
not be scrubbed. Deterministic (seeded); run ``python tests/data/make_pii_set.py`` to regenerate.

Positives come in the formats people write: emails with subdomains/plus tags, phones in international and national
layouts (some deliberately hard: no separators, two groups), IPv4/IPv6 (compressed, full, mapped), card numbers
of each major issuer with spaces/dashes/none (valid Luhn), IBANs of several countries with and without spaces
(valid mod-97). Negatives: versions, dates, times, ISBNs, prices, coordinates, order numbers, hashes, UUIDs,
cards failing Luhn, IBANs failing mod-97, out-of-range IPs, ports, scores, ranges, ZIP codes.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from gristmill.curation.pii import luhn_ok

rng = random.Random(13)


def luhn_complete(prefix: str, length: int) -> str:
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    return next(body + check for check in "0123456789" if luhn_ok(body + check))


def iban(country: str, bban_len: int) -> str:
    bban = "".join(rng.choice("0123456789") for _ in range(bban_len))
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    return f"{country}{check:02d}{bban}"


def spaced(s: str, sep: str = " ", group: int = 4) -> str:
    return sep.join(s[i:i + group] for i in range(0, len(s), group))


def bad_luhn(card: str) -> str:
    last = (int(card[-1]) + 1) % 10
    return card[:-1] + str(last)


names = ["ana", "li.wei", "j.smith", "maria+news", "o.connor", "dev-team", "kwame", "sofia_r", "t.nguyen", "priya"]
domains = ["example.com", "mail.example.org", "uni.example.ac.uk", "corp.example.co", "example.io", "example.de"]
phones = ["+1 415 555 0132", "+1-800-555-0199", "+44 20 7946 0958", "+49 30 901820", "+33 1 42 68 53 00",
          "+91 98765 43210", "+81-3-1234-5678", "+61 2 9374 4000", "+34 912 345 678", "+55 11 91234-5678",
          "(555) 123-4567", "555-867-5309", "555.234.9876", "020 7946 0958", "030 1234 5678",
          "+353 1 234 5678", "+27 21 555 0101", "+86 10 6552 9988", "(212) 555-0147", "+7 495 123-45-67"]
hard_phones = ["5551234567", "07700 900123", "+4915112345678"]  # no separators / two groups: may be missed
ipv4 = ["192.168.1.20", "10.0.0.7", "172.16.254.1", "8.8.8.8", "203.0.113.45", "198.51.100.23", "127.0.0.1",
        "100.64.12.9"]
ipv6 = ["2001:db8::ff00:42:8329", "fe80::1ff:fe23:4567:890a", "2001:0db8:85a3:0000:0000:8a2e:0370:7334", "::1",
        "2606:4700:4700::1111", "::ffff:192.0.2.128"]
card_specs = [("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("34", 15), ("37", 15), ("6011", 16), ("65", 16)]
iban_specs = [("DE", 18), ("GB", None), ("FR", 23), ("NL", None), ("ES", 20), ("IT", None), ("CH", 17), ("BE", 12)]

templates = {
    "email": ["Please write to {v} for details.", "Contact: {v}", "CC {v} on the thread, thanks!",
              "My address is {v}, reply there.", "Send the invoice to <{v}>."],
    "phone": ["Call us at {v} during office hours.", "Phone: {v}", "You can reach me on {v} after 6pm.",
              "Support line {v} (toll free).", "Mobile {v}; landline unknown."],
    "ipv4": ["The server listens on {v} port 22.", "Blocked requests from {v} yesterday.", "Set the gateway to {v}.",
             "ping {v} to check the link"],
    "ipv6": ["The host has address {v} on eth0.", "Allow traffic from {v} only.", "DNS resolver: {v}"],
    "credit_card": ["Card number {v} exp 04/27.", "Charge it to {v} please.", "My card is {v}, CVV on request."],
    "iban": ["Transfer to IBAN {v} by Friday.", "Account: {v}", "Pay the deposit into {v} (reference 4471)."],
}

rows: list[dict[str, object]] = []


def add(text: str, pii: list[tuple[str, str]]) -> None:
    rows.append({"text": text, "pii": [{"type": t, "value": v} for t, v in pii]})


for i in range(40):
    v = f"{names[i % len(names)]}@{domains[i % len(domains)]}"
    add(rng.choice(templates["email"]).format(v=v), [("email", v)])
for v in phones * 2:
    add(rng.choice(templates["phone"]).format(v=v), [("phone", v)])
for v in hard_phones:
    add(rng.choice(templates["phone"]).format(v=v), [("phone", v)])
for v in ipv4 * 2:
    add(rng.choice(templates["ipv4"]).format(v=v), [("ipv4", v)])
for v in ipv6 * 2:
    add(rng.choice(templates["ipv6"]).format(v=v), [("ipv6", v)])
for i in range(32):
    prefix, length = card_specs[i % len(card_specs)]
    card = luhn_complete(prefix, length)
    shown = [card, spaced(card), spaced(card, "-")][i % 3] if length == 16 else card
    add(rng.choice(templates["credit_card"]).format(v=shown), [("credit_card", shown)])
lengths = {"GB": None, "NL": None, "IT": None}
for i in range(24):
    country, n = iban_specs[i % len(iban_specs)]
    if country == "GB":
        value = "GB" + "00" + "WEST" + "".join(rng.choice("0123456789") for _ in range(14))
        moved = value[4:] + "GB00"
        value = f"GB{98 - int(''.join(str(int(c, 36)) for c in moved)) % 97:02d}" + value[4:]
    elif country == "NL":
        value = "NL00ABNA" + "".join(rng.choice("0123456789") for _ in range(10))
        moved = value[4:] + "NL00"
        value = f"NL{98 - int(''.join(str(int(c, 36)) for c in moved)) % 97:02d}" + value[4:]
    elif country == "IT":
        value = "IT00X" + "".join(rng.choice("0123456789") for _ in range(22))
        moved = value[4:] + "IT00"
        value = f"IT{98 - int(''.join(str(int(c, 36)) for c in moved)) % 97:02d}" + value[4:]
    else:
        value = iban(country, n)  # type: ignore[arg-type]
    shown = spaced(value) if i % 2 == 0 else value
    add(rng.choice(templates["iban"]).format(v=shown), [("iban", shown)])

# Several items in one line.
for i in range(12):
    e = f"{names[i % len(names)]}@{domains[(i + 2) % len(domains)]}"
    p = phones[(i * 3) % len(phones)]
    ip = ipv4[i % len(ipv4)]
    add(f"Ticket {1000 + i}: user {e} called from {p}; last login from {ip} on 2024-0{1 + i % 9}-1{i % 10}.",
        [("email", e), ("phone", p), ("ipv4", ip)])

negatives = [
    "Upgrade to version 2.4.1 before Friday.", "We shipped v1.2.3.4 last week.", "Python 3.11.7 is required.",
    "The meeting is on 2024-03-15 at 14:30.", "Deadline: 15/03/2024.", "Born 1987-11-02 in Lagos.",
    "Run it at 12:30:45 UTC.", "ISBN 978-3-16-148410-0 is on the shelf.", "See ISBN 0-306-40615-2.",
    "It costs $1,234.56 plus tax.", "Total: 12,345,678 units.", "Pi is about 3.14159265.",
    "Coordinates 51.5074, -0.1278.", "Order #123456789012 has shipped.", "Tracking number 1Z999AA10123456784.",
    "Commit deadbeefcafe1234 fixed it.", "UUID 123e4567-e89b-12d3-a456-426614174000.",
    "The ratio was 1:2:3 across groups.", "Open localhost:8080 in a browser.", "Use the port 5432 for postgres.",
    "Final score 3-1 after extra time.", "The years 1990-2000 saw growth.", "ZIP code 94103.",
    "Room 4.12 on floor 4.", "Chapter 10.2.3 covers it.", "Address 999.1.1.1 is not valid.",
    "Read the RFC 3986 section 3.2.2.", "Invoice INV-2024-000123 is overdue.", "Model gpt-4-0613 answered.",
    "Matrix 4x4, values 1 2 3 4 5 6 7 8.", "Temperature 36.6 C at 08:15.", "Patch 10.0.19045.3803 applied.",
    "Send to user@localhost for testing.", "The @mention feature is new.", "Email me later (no address).",
    "Card ending 1111 was charged.", "Serial SN-4471-2231-9982.", "Phone number withheld.",
    "The value 1e-9 is tiny.", "Call 911 in an emergency.", "Dial extension 4421.",
    "Agent 007 returns.", "The C++ standard 14882:2020.", "Timestamps 1700000000 and 1700003600.",
    "Year 2023 revenue: 4,500,000.", "Build 20240115.1 passed.", "Scale 1:50000 map.", "Call at 10:00-11:00.",
    "Vector (1.0, 2.5, -3.25).", "Hex colour #1a2b3c.", "Ports 8000-8999 are open.",
]
for n in range(16):
    card = luhn_complete(card_specs[n % len(card_specs)][0], 16)
    negatives.append(f"Test number {spaced(bad_luhn(card))} fails the checksum.")
for _ in range(10):
    good = iban("DE", 18)
    broken = good[:2] + f"{(int(good[2:4]) + 1) % 100:02d}" + good[4:]
    negatives.append(f"Reference {spaced(broken)} is not an account.")
for text in negatives:
    add(text, [])
for n in range(20):  # plain prose
    add(rng.choice(["Knead the dough for ten minutes.", "The river flooded in spring.",
                    "Summarize the article in three sentences.", "Translate 'good morning' into Spanish.",
                    "List four primes below 20: 2, 3, 5, 7."]) + f" (note {n})", [])

rng.shuffle(rows)
out = Path(__file__).with_name("pii_labelled.jsonl")
out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
print(f"{len(rows)} lines, {sum(len(r['pii']) for r in rows)} PII items -> {out}")  # type: ignore[arg-type]
