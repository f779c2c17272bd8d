"""Sender checks on members' replies: DNS answers (dns), SPF (spf), and the check that gathers DKIM, SPF
and DMARC evidence and asks ``domain.senderauth_rules`` for the verdict (check)."""
