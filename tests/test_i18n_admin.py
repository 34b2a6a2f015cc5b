"""Money and admin texts in the reader's language: refusals, `/animate-admin`, `/jobs` and audit
lines. The catalogues may still be empty, so the words can stay English; amounts follow the
reader's language ("0,40 $" in German) all the same, which is what these tests watch.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.errors import user_message
from bot.guild_settings import BotDefaults
from bot.i18n import _t, render
from bot.spending import LimitReached, Spending, money
from bot.store import JobStore
from cogs.audit import post_audit, post_audit_everywhere, post_to_channel
from tests.test_admin import Server
from tests.test_admin import server as server  # the fixtures, shared with the admin tests
from tests.test_discord_bot import env as env

NOW = datetime(2025, 3, 14, 15, 0, tzinfo=UTC)
TOMORROW = datetime(2025, 3, 15, tzinfo=UTC)
MEMBER = 1_234_567_890_123_456_789
GUILD = 987_654_321_098_765_432


def de_usd(amount: str) -> str:
    """German money as Babel writes it: decimal comma, a no-break space, then the sign."""
    return f"{amount}\xa0$"


async def test_a_spending_refusal_shows_its_amounts_in_the_readers_format(store: JobStore) -> None:
    spending = Spending(store.engine, BotDefaults(member_daily_usd=1.0))
    await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=0.6, now=NOW)
    with pytest.raises(LimitReached) as refused:
        await spending.reserve(requester_id=MEMBER, guild_id=GUILD, estimate_usd=0.6, now=NOW)

    english = render(user_message(refused.value), "en")
    german = render(user_message(refused.value), "de")
    assert "about $0.60, but your daily allowance has $0.40 left" in english
    assert de_usd("0,60") in german and de_usd("0,40") in german
    assert "$0.40" not in german
    # The Discord timestamp is the same markup in every language.
    resets = f"<t:{int(TOMORROW.timestamp())}:R>"
    assert resets in english and resets in german


async def test_animate_admin_answers_a_german_admin_in_german_money(server: Server) -> None:
    fake = server.env.discord
    fake.set_user_locale(server.admin_id, "de")

    reply = await server.admin("limits", member_daily_usd=2.5)
    assert (
        f"das Tagesbudget pro Mitglied: {de_usd('5,00')} (Bot-Standard) → {de_usd('2,50')}" in reply
    )
    shown = await server.admin("show")
    assert f"das Tagesbudget pro Mitglied: {de_usd('2,50')} (dieser Server)" in shown
    assert "$" + "2.50" not in shown
    usage = await server.admin("usage", member=server.member_id)
    assert f"Tagesbudget: noch {de_usd('2,50')} von {de_usd('2,50')}" in usage
    # A refusal, too, is rendered for the admin who asked.
    refused = await server.admin("limits", member_monthly_usd=1e9)
    assert f"{de_usd('1.000.000.000,00')} ist kein sinnvoller Wert" in refused

    # Another admin, whose Discord is in English, reads dollars as before.
    other = fake.add_user("lin")
    fake.make_admin(server.env.guild_id, other)
    assert "$2.50 (this server)" in await server.admin("show", user_id=other)


async def test_jobs_shows_a_german_member_their_allowance_in_german_money(server: Server) -> None:
    server.env.discord.set_user_locale(server.member_id, "de")
    reply = await server.command("jobs", user_id=server.member_id)
    assert f"Dein Tagesbudget: noch {de_usd('5,00')} von {de_usd('5,00')}" in reply
    assert f"Dein Monatsbudget: noch {de_usd('20,00')} von {de_usd('20,00')}" in reply


async def test_audit_lines_follow_the_servers_language_not_the_admins(server: Server) -> None:
    fake, guild_id = server.env.discord, server.env.guild_id
    fake.set_guild_locale(guild_id, "de")
    await fake.wait_for(
        lambda: str(getattr(server.bot.get_guild(guild_id), "preferred_locale", "")) == "de",
        what="the bot to see the server's new language",
    )
    log_channel = fake.add_text_channel(guild_id, "mod-log")
    await server.admin("log-channel", channel=log_channel)
    await fake.wait_for(lambda: len(server.lines_in(log_channel)) == 1)

    # The admin's own reply is in their (English) Discord language ...
    assert "→ $3.00" in await server.admin("limits", member_daily_usd=3.0)
    await fake.wait_for(lambda: len(server.lines_in(log_channel)) == 2)
    # ... the line in the server's log channel in the server's.
    assert server.lines_in(log_channel)[1].content == (
        f"<@{server.admin_id}> hat geändert: das Tagesbudget pro Mitglied von {de_usd('5,00')} "
        f"(Bot-Standard) auf {de_usd('3,00')}."
    )

    # Bot-wide notices and job events: a Message rendered per server; plain text as it is.
    await post_audit_everywhere(server.bot, _t("Spent {amount}.", amount=money(1234.5)))
    await post_audit(server.bot, guild_id, "a plain line, $1.20")
    notice, plain = server.lines_in(log_channel)[2:]
    assert notice.content == f"Spent {de_usd('1.234,50')}."
    assert plain.content == "a plain line, $1.20"


async def test_an_audit_line_for_a_server_this_process_does_not_see_uses_the_jobs_language(
    server: Server,
) -> None:
    """With several processes a job may end in one that does not own its server's shard: the
    language the job recorded stands in for the server's; without one, English."""
    fake = server.env.discord
    log_channel = fake.add_text_channel(server.env.guild_id, "mod-log")
    unseen_guild = 4242  # not in this process's cache
    assert server.bot.get_guild(unseen_guild) is None
    line = _t("Spent {amount}.", amount=money(2.5))
    assert await post_to_channel(
        server.bot, unseen_guild, log_channel, line, fallback_language="fr"
    )
    assert await post_to_channel(server.bot, unseen_guild, log_channel, line)
    french, english = server.lines_in(log_channel)
    assert french.content == "Spent 2,50\xa0$US."
    assert english.content == "Spent $2.50."
