// Unit tests of the admin endpoints' query arguments (sse_stats, sse_clients).
#include <gtest/gtest.h>

#include <string>

#include "protocol/admin_query.h"

using namespace sse;

namespace {

std::string clients_error(const ClientsQueryArgs& args) {
    ClientsQuery q;
    std::string reason;
    EXPECT_FALSE(parse_clients_query(args, q, reason));
    return reason;
}

std::string stats_error(const StatsQueryArgs& args) {
    StatsQuery q;
    std::string reason;
    EXPECT_FALSE(parse_stats_query(args, q, reason));
    return reason;
}

}  // namespace

TEST(StatsQuery, NoArgumentsLeaveTheFormatToAccept) {
    StatsQuery q;
    std::string reason;
    ASSERT_TRUE(parse_stats_query({}, q, reason)) << reason;
    EXPECT_FALSE(q.format.has_value());
    EXPECT_FALSE(q.per_channel);
}

TEST(StatsQuery, Format) {
    StatsQuery q;
    std::string reason;
    StatsQueryArgs args;
    args.format = "prometheus";
    ASSERT_TRUE(parse_stats_query(args, q, reason));
    EXPECT_EQ(q.format, StatsFormat::kPrometheus);
    args.format = "json";
    ASSERT_TRUE(parse_stats_query(args, q, reason));
    EXPECT_EQ(q.format, StatsFormat::kJson);
    args.format = "JSON";
    EXPECT_EQ(stats_error(args), "unknown format: use format=json or format=prometheus");
    args.format = "";
    EXPECT_EQ(stats_error(args), "unknown format: use format=json or format=prometheus");
}

TEST(StatsQuery, Channels) {
    StatsQuery q;
    std::string reason;
    StatsQueryArgs args;
    args.channels = "all";
    ASSERT_TRUE(parse_stats_query(args, q, reason));
    EXPECT_TRUE(q.per_channel);
    EXPECT_TRUE(q.all_channels);
    EXPECT_TRUE(q.channels.empty());

    args.channels = "orders, blog.*,orders";
    ASSERT_TRUE(parse_stats_query(args, q, reason)) << reason;
    EXPECT_TRUE(q.per_channel);
    EXPECT_FALSE(q.all_channels);
    EXPECT_EQ(q.channels, (std::vector<std::string_view>{"orders", "blog.*"}));

    args.channels = "a b";
    EXPECT_EQ(stats_error(args),
              "invalid channel name \"a b\": use 1-128 of A-Z a-z 0-9 _ - . : @ / (or channels=all)");
    args.channels = "";
    EXPECT_EQ(stats_error(args), "no channel given (or channels=all)");
}

TEST(StatsQuery, NamesAtMost1024Channels) {
    std::string list;
    for (int i = 0; i < 1025; i++) list += "c" + std::to_string(i) + ",";
    StatsQueryArgs args;
    args.channels = list;
    EXPECT_EQ(stats_error(args), "too many channels: at most 1024 per request (or channels=all)");
}

TEST(StatsQuery, FormatIsCheckedFirst) {
    StatsQueryArgs args;
    args.format = "xml";
    args.channels = "a b";
    EXPECT_EQ(stats_error(args), "unknown format: use format=json or format=prometheus");
}

TEST(ClientsQuery, Defaults) {
    ClientsQuery q;
    std::string reason;
    ASSERT_TRUE(parse_clients_query({}, q, reason));
    EXPECT_EQ(q.id, 0u);
    EXPECT_TRUE(q.user.empty());
    EXPECT_TRUE(q.channel.empty());
    EXPECT_EQ(q.after, 0u);
    EXPECT_EQ(q.limit, 100u);
}

TEST(ClientsQuery, Filters) {
    ClientsQuery q;
    std::string reason;
    ClientsQueryArgs args;
    args.id = "42";
    args.user = "alice smith";
    args.channel = "orders";
    args.after = "7";
    args.limit = "50";
    ASSERT_TRUE(parse_clients_query(args, q, reason)) << reason;
    EXPECT_EQ(q.id, 42u);
    EXPECT_EQ(q.user, "alice smith");
    EXPECT_EQ(q.channel, "orders");
    EXPECT_EQ(q.after, 7u);
    EXPECT_EQ(q.limit, 50u);
}

TEST(ClientsQuery, RefusesBadFilters) {
    ClientsQueryArgs args;
    for (const char* id : {"0", "", "-1", "x", "123456789012345678901"}) {
        args.id = id;
        EXPECT_EQ(clients_error(args), "id must be a client id (a decimal number)") << id;
    }
    args = {};
    args.user = "";
    EXPECT_EQ(clients_error(args), "user must not be empty");
    args = {};
    args.channel = "";
    EXPECT_EQ(clients_error(args), "channel must not be empty");
    args = {};
    args.after = "next";
    EXPECT_EQ(clients_error(args), "after must be a client id, as \"next\" gives it");
}

TEST(ClientsQuery, AfterZeroIsTheFirstPage) {
    ClientsQuery q;
    std::string reason;
    ClientsQueryArgs args;
    args.after = "0";
    ASSERT_TRUE(parse_clients_query(args, q, reason));
    EXPECT_EQ(q.after, 0u);
}

TEST(ClientsQuery, LimitFrom1To1000) {
    ClientsQuery q;
    std::string reason;
    ClientsQueryArgs args;
    for (const char* ok : {"1", "1000", "0001", "999"}) {
        args.limit = ok;
        ASSERT_TRUE(parse_clients_query(args, q, reason)) << ok;
    }
    args.limit = "0001";
    parse_clients_query(args, q, reason);
    EXPECT_EQ(q.limit, 1u);
    for (const char* bad : {"0", "1001", "", "+5", "-1", " 5", "5 ", "1e3", "99999999999999999999999999"}) {
        args.limit = bad;
        EXPECT_EQ(clients_error(args), "limit must be from 1 to 1000") << bad;
    }
}
